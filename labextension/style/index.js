// Entry point for the builder's styleModule: it bundles this as static/style.js.
import './index.css';
