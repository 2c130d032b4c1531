/**
 * JupyterLab side of oblix_jupyter.
 *
 * - Keeps one `oblix.session` comm per notebook so the kernel knows which
 *   notebook file it belongs to (see ./session.ts for the message contract).
 * - Adds the `oblix:open-chat` command (palette + notebook toolbar), which
 *   asks the kernel for its chat ipywidget and docks a view of it in the
 *   right sidebar, one sidebar panel per notebook.
 *
 * There is no server extension: everything goes through the kernel.
 */

import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import {
  INotebookModel,
  INotebookTracker,
  NotebookPanel
} from '@jupyterlab/notebook';
import { MimeModel } from '@jupyterlab/rendermime';
import { CommandToolbarButton, LabIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { IDisposable } from '@lumino/disposable';
import { Panel, Widget } from '@lumino/widgets';

import { SessionLink } from './session';

const OPEN_CHAT = 'oblix:open-chat';

/**
 * The mime type that @jupyter-widgets/jupyterlab-manager registers on every
 * notebook's own rendermime registry, bound to that notebook's widget
 * manager. Rendering through it avoids depending on the widgets packages
 * (and their shared-singleton versions) at build time.
 */
const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';

const chatIcon = new LabIcon({
  name: 'oblix-jupyter:chat',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<path class="jp-icon3" fill="#616161" d="M4 3h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6v2h2V9H7zm4 0v2h2V9h-2zm4 0v2h2V9h-2z"/>' +
    '</svg>'
});

/**
 * Right-sidebar panel holding the view of one notebook's chat widget.
 */
class ChatSidebar extends Panel {
  constructor(private readonly _notebook: NotebookPanel) {
    super();
    this.id = `oblix-chat-${_notebook.id}`;
    this.addClass('jp-OblixChat');
    this.title.icon = chatIcon;
    this.title.label = 'Oblix chat';
    this._updateCaption();
    _notebook.context.pathChanged.connect(this._updateCaption, this);
  }

  /** Show the widget `modelId`, replacing any other one shown before. */
  async showModel(modelId: string): Promise<void> {
    if (modelId === this._modelId) {
      return;
    }
    this._modelId = modelId;
    // Dispose the old view (not the model, which the kernel owns).
    while (this.widgets.length) {
      this.widgets[0].dispose();
    }
    const rendermime = this._notebook.content.rendermime;
    if (!rendermime.mimeTypes.includes(WIDGET_MIME)) {
      this.addWidget(
        message(
          'The ipywidgets JupyterLab extension (jupyterlab_widgets) is not ' +
            'installed, so the chat widget cannot be shown.'
        )
      );
      return;
    }
    const renderer = rendermime.createRenderer(WIDGET_MIME);
    this.addWidget(renderer);
    await renderer.renderModel(
      new MimeModel({
        data: {
          [WIDGET_MIME]: { model_id: modelId, version_major: 2, version_minor: 1 }
        }
      })
    );
  }

  dispose(): void {
    if (!this.isDisposed) {
      this._notebook.context.pathChanged.disconnect(this._updateCaption, this);
    }
    super.dispose();
  }

  private _updateCaption(): void {
    this.title.caption = `Oblix chat: ${this._notebook.context.localPath}`;
  }

  private _modelId = '';
}

function message(text: string): Widget {
  const widget = new Widget();
  widget.addClass('jp-OblixChat-message');
  widget.node.textContent = text;
  return widget;
}

/**
 * Enter in the chat's input sends; Shift+Enter makes a new line. ipywidgets'
 * Textarea has no key events of its own, so this clicks the chat's Send
 * button. The textarea syncs its value on every input event, so the kernel
 * has the text before the click arrives. Listening on the document (capture
 * phase) also covers a chat shown in a cell output.
 */
function sendOnEnter(event: KeyboardEvent): void {
  const target = event.target;
  if (
    event.key !== 'Enter' ||
    event.shiftKey ||
    event.altKey ||
    event.ctrlKey ||
    event.metaKey ||
    event.isComposing ||
    !(target instanceof HTMLTextAreaElement) ||
    !target.closest('.oblix-input')
  ) {
    return;
  }
  const send = target
    .closest('.oblix-chat')
    ?.querySelector<HTMLButtonElement>('button.oblix-send');
  if (!send) {
    return;
  }
  // While an answer streams the button is disabled: Enter then does nothing
  // rather than adding a line the user did not ask for.
  event.preventDefault();
  event.stopPropagation();
  if (!send.disabled) {
    send.click();
  }
}

/**
 * Adds the chat button to every notebook toolbar. The button passes its
 * notebook's id so that it acts on that notebook, not on whichever one
 * the tracker considers current.
 */
class ChatButtonExtension
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  constructor(private readonly _commands: CommandRegistry) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new CommandToolbarButton({
      commands: this._commands,
      id: OPEN_CHAT,
      args: { notebookId: panel.id },
      label: 'Chat'
    });
    panel.toolbar.insertItem(10, 'oblixChat', button);
    return button;
  }
}

function activate(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  palette: ICommandPalette | null
): void {
  const links = new Map<NotebookPanel, SessionLink>();
  const sidebars = new Map<NotebookPanel, ChatSidebar>();

  const showChat = (panel: NotebookPanel, modelId: string): void => {
    let sidebar = sidebars.get(panel);
    if (!sidebar || sidebar.isDisposed) {
      sidebar = new ChatSidebar(panel);
      sidebars.set(panel, sidebar);
      const created = sidebar;
      created.disposed.connect(() => {
        if (sidebars.get(panel) === created) {
          sidebars.delete(panel);
        }
      });
      app.shell.add(sidebar, 'right', { rank: 1000 });
    }
    app.shell.activateById(sidebar.id);
    sidebar.showModel(modelId).catch(reason => {
      console.error('oblix-jupyter: cannot render the chat widget', reason);
    });
  };

  const track = (panel: NotebookPanel): void => {
    if (links.has(panel)) {
      return;
    }
    const link = new SessionLink(panel);
    links.set(panel, link);
    // The kernel names the chat widget in reply to 'open_chat'.
    link.chatWidget.connect((_, modelId) => showChat(panel, modelId));
    // After a restart the widget model is gone; a stale view would mislead.
    link.kernelReset.connect(() => sidebars.get(panel)?.dispose());
    panel.disposed.connect(() => {
      link.dispose();
      links.delete(panel);
      sidebars.get(panel)?.dispose();
    });
  };
  tracker.forEach(track);
  tracker.widgetAdded.connect((_, panel) => track(panel));
  document.addEventListener('keydown', sendOnEnter, true);

  const findPanel = (args: { notebookId?: unknown }): NotebookPanel | null =>
    typeof args.notebookId === 'string'
      ? tracker.find(panel => panel.id === args.notebookId) ?? null
      : tracker.currentWidget;

  app.commands.addCommand(OPEN_CHAT, {
    label: 'Oblix: open chat',
    caption: "Open this notebook's Oblix chat in the right sidebar",
    icon: chatIcon,
    isEnabled: args => findPanel(args) !== null,
    execute: async args => {
      const panel = findPanel(args);
      const link = panel && links.get(panel);
      if (!panel || !link) {
        return;
      }
      const result = await link.requestChat();
      if (result === 'not-loaded') {
        Notification.warning(
          `Oblix is not loaded in the kernel of ${panel.context.localPath}: ` +
            'run %load_ext oblix_jupyter in a cell, then try again.',
          { autoClose: 8000 }
        );
      } else if (result === 'no-kernel') {
        Notification.warning(
          `${panel.context.localPath} has no running kernel.`,
          { autoClose: 5000 }
        );
      }
    }
  });
  palette?.addItem({ command: OPEN_CHAT, category: 'Oblix' });
  app.docRegistry.addWidgetExtension(
    'Notebook',
    new ChatButtonExtension(app.commands)
  );
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'oblix-jupyter:plugin',
  description:
    'Links notebooks to the oblix_jupyter kernel extension and shows its chat.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette],
  activate
};

export default plugin;
