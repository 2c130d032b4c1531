/**
 * Copy and Insert below under each code block of an Oblix answer in a
 * notebook's cell outputs.
 *
 * The kernel renders answers as inert HTML (no script, no handlers), so it
 * cannot give a code block working buttons itself: the front end adds them
 * here, as its own DOM nodes next to the block. The code is only ever read
 * as text (`textContent`) and written to the clipboard or to a new cell's
 * source, where it stays until the user runs it. The chat panel and the
 * approval boxes have buttons of their own (ipywidgets), so blocks inside
 * them are left alone.
 */

import { Clipboard } from '@jupyterlab/apputils';
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';

/** Rendered Markdown of an answer (see oblix_jupyter/render.py's ROOT_CLASS). */
const ANSWER = '.jp-OutputArea-output .oblix-markdown';
const DONE = 'oblixActions';
const COPIED_MS = 1500;

/** The code of a rendered block, as the model wrote it (without the renderer's final newline). */
export function codeOf(pre: HTMLElement): string {
  const text = (pre.querySelector('code') ?? pre).textContent ?? '';
  return text.endsWith('\n') ? text.slice(0, -1) : text;
}

/**
 * Watches one notebook's outputs: every code block an answer shows (also the
 * ones re-rendered while the answer streams) gets its buttons.
 */
export class CodeBlockActions implements IDisposable {
  constructor(private readonly _panel: NotebookPanel) {
    this._observer = new MutationObserver(() => this._decorateAll());
    this._observer.observe(_panel.content.node, {
      childList: true,
      subtree: true
    });
    this._decorateAll();
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (!this._isDisposed) {
      this._isDisposed = true;
      this._observer.disconnect();
    }
  }

  private _decorateAll(): void {
    const blocks = this._panel.content.node.querySelectorAll<HTMLElement>(
      `${ANSWER} pre`
    );
    blocks.forEach(pre => {
      const owned = pre.closest('.oblix-chat, .oblix-approval');
      if (!pre.dataset[DONE] && !owned) {
        pre.dataset[DONE] = '1';
        pre.after(this._bar(pre));
      }
    });
  }

  private _bar(pre: HTMLElement): HTMLElement {
    const bar = document.createElement('div');
    bar.className = 'jp-OblixCodeActions';
    const copy = button('Copy', 'Copy this code to the clipboard');
    copy.addEventListener('click', () => {
      void copyText(codeOf(pre)).then(() => {
        copy.textContent = 'Copied';
        setTimeout(() => (copy.textContent = 'Copy'), COPIED_MS);
      });
    });
    const insert = button(
      'Insert below',
      'Insert this code as a new cell below this one (it does not run)'
    );
    insert.addEventListener('click', () => this._insertBelow(pre));
    bar.append(copy, insert);
    return bar;
  }

  private _insertBelow(pre: HTMLElement): void {
    const notebook = this._panel.content;
    const index = notebook.widgets.findIndex(cell => cell.node.contains(pre));
    if (index < 0) {
      return; // the output was cleared under the click
    }
    notebook.activeCellIndex = index;
    NotebookActions.insertBelow(notebook);
    notebook.activeCell?.model.sharedModel.setSource(codeOf(pre));
  }

  private _observer: MutationObserver;
  private _isDisposed = false;
}

function button(label: string, title: string): HTMLButtonElement {
  const node = document.createElement('button');
  node.type = 'button';
  node.className = 'jp-OblixCodeActions-button';
  node.textContent = label;
  node.title = title;
  return node;
}

/** The asynchronous Clipboard API where the page may use it, JupyterLab's copy otherwise. */
async function copyText(text: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    Clipboard.copyToSystem(text);
  }
}
