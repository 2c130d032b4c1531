/**
 * JupyterLab (and Notebook 7) side of oblix_jupyter.
 *
 * - Keeps one `oblix.session` comm per notebook so the kernel knows which
 *   notebook file it belongs to (see ./session.ts for the message contract).
 * - Adds the `oblix:open-chat` command (palette, notebook toolbar, Accel
 *   Shift O), which asks the kernel for its chat ipywidget and docks a view
 *   of it in the right sidebar, one sidebar panel per notebook. The panel
 *   outlives kernel restarts (it says so and reconnects) and page reloads
 *   (JupyterLab's layout restorer opens it again).
 * - Gives code blocks in answers' cell outputs Copy and Insert below
 *   (./codeblocks.ts).
 *
 * There is no server extension: everything goes through the kernel.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import {
  INotebookModel,
  INotebookTracker,
  NotebookPanel
} from '@jupyterlab/notebook';
import { MimeModel } from '@jupyterlab/rendermime';
import { IStateDB } from '@jupyterlab/statedb';
import { CommandToolbarButton, LabIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';
import { IDisposable } from '@lumino/disposable';
import { Panel, Widget } from '@lumino/widgets';

import { ApprovalWatch } from './approvals';
import { CodeBlockActions } from './codeblocks';
import { SessionLink } from './session';

const OPEN_CHAT = 'oblix:open-chat';
const PLUGIN_ID = 'oblix-jupyter:plugin';
/** Where the notebooks whose kernel may load Oblix without asking are kept (the user's workspace state, never the notebook). */
const AUTOLOAD_KEY = `${PLUGIN_ID}:autoload`;
const LOAD_CODE = '%load_ext oblix_jupyter';
/** How long a restored chat waits for its notebook to be opened again. */
const RESTORE_WAIT_MS = 60_000;

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

/** A button shown in a sidebar notice. */
interface INoticeAction {
  label: string;
  onClick: (remember: boolean) => void;
  /** Offer "Always for this notebook" next to the button. */
  rememberable?: boolean;
}

/**
 * Right-sidebar panel holding the view of one notebook's chat widget, or a
 * notice saying why there is none right now (kernel restarting, Oblix not
 * loaded) with the one click that fixes it.
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

  get notebook(): NotebookPanel {
    return this._notebook;
  }

  /** Whether a chat widget is shown (not a notice). */
  get connected(): boolean {
    return this._modelId !== '';
  }

  /** Show the widget `modelId`, replacing whatever was shown before. */
  async showModel(modelId: string): Promise<void> {
    if (modelId === this._modelId) {
      return;
    }
    this._clear();
    this._modelId = modelId;
    const rendermime = this._notebook.content.rendermime;
    if (!rendermime.mimeTypes.includes(WIDGET_MIME)) {
      this.showNotice(
        'The ipywidgets JupyterLab extension (jupyterlab_widgets) is not ' +
          'installed, so the chat widget cannot be shown.'
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

  /** Replace the chat with `text` and, if given, the button that resolves it. */
  showNotice(text: string, action?: INoticeAction): void {
    this._clear();
    this.addWidget(notice(text, action));
  }

  dispose(): void {
    if (!this.isDisposed) {
      this._notebook.context.pathChanged.disconnect(this._updateCaption, this);
    }
    super.dispose();
  }

  private _clear(): void {
    // Dispose the old view (not the widget model, which the kernel owns).
    this._modelId = '';
    while (this.widgets.length) {
      this.widgets[0].dispose();
    }
  }

  private _updateCaption(): void {
    this.title.caption = `Oblix chat: ${this._notebook.context.localPath}`;
  }

  private _modelId = '';
}

/** A notice built from text nodes only: a path or an error in it stays text. */
function notice(text: string, action?: INoticeAction): Widget {
  const widget = new Widget();
  widget.addClass('jp-OblixChat-message');
  const paragraph = document.createElement('p');
  paragraph.textContent = text;
  widget.node.appendChild(paragraph);
  if (action) {
    const row = document.createElement('div');
    row.className = 'jp-OblixChat-actions';
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'jp-mod-styled jp-mod-accept jp-OblixChat-load';
    button.textContent = action.label;
    row.appendChild(button);
    let remember: HTMLInputElement | null = null;
    if (action.rememberable) {
      const label = document.createElement('label');
      label.className = 'jp-OblixChat-remember';
      remember = document.createElement('input');
      remember.type = 'checkbox';
      label.append(remember, ' Always for this notebook');
      row.appendChild(label);
    }
    button.addEventListener('click', () => {
      button.disabled = true;
      action.onClick(remember?.checked ?? false);
    });
    widget.node.appendChild(row);
  }
  return widget;
}

/**
 * Enter in the chat's input sends; Shift+Enter makes a new line. ipywidgets'
 * Textarea has no key events of its own, so this clicks the chat's Send
 * button. Listening on the document (capture phase) also covers a chat shown
 * in a cell output.
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
    // The chat's textarea syncs on `change` (see panel.py): fire it first, so
    // that the kernel has the whole text before the click arrives.
    target.dispatchEvent(new Event('change', { bubbles: true }));
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

/**
 * The notebooks (by path) whose kernel may load Oblix without asking, kept
 * in JupyterLab's state database (the user's workspace): a choice that a notebook
 * file cannot set for itself.
 */
class AutoloadChoices {
  constructor(private readonly _state: IStateDB | null) {}

  async allows(path: string): Promise<boolean> {
    return (await this._paths()).includes(path);
  }

  async allow(path: string): Promise<void> {
    const paths = await this._paths();
    if (this._state && !paths.includes(path)) {
      await this._state.save(AUTOLOAD_KEY, [...paths, path]);
    }
  }

  private async _paths(): Promise<string[]> {
    const saved = this._state ? await this._state.fetch(AUTOLOAD_KEY) : null;
    return Array.isArray(saved)
      ? saved.filter((item): item is string => typeof item === 'string')
      : [];
  }
}

function activate(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  palette: ICommandPalette | null,
  restorer: ILayoutRestorer | null,
  state: IStateDB | null
): void {
  const links = new Map<NotebookPanel, SessionLink>();
  const sidebars = new Map<NotebookPanel, ChatSidebar>();
  const chats = new WidgetTracker<ChatSidebar>({ namespace: 'oblix-chat' });
  const autoload = new AutoloadChoices(state);
  const asking = new Set<NotebookPanel>();
  // Chats to connect once their kernel answers (after a restart, or restored
  // before the kernel was up): once, because the link's state also changes
  // while a request is answered, and reacting to each change would ask forever.
  const awaitingKernel = new Set<NotebookPanel>();

  const sidebarFor = (panel: NotebookPanel, show: boolean): ChatSidebar => {
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
      // The restorer names it by its notebook's path: keep that name current.
      panel.context.pathChanged.connect(() => void chats.save(created), created);
      app.shell.add(sidebar, 'right', { rank: 1000 });
      void chats.add(sidebar);
    }
    if (show) {
      app.shell.activateById(sidebar.id);
    }
    return sidebar;
  };

  /** Run `%load_ext oblix_jupyter` in the notebook's kernel (the user clicked for it, now or once for this notebook). */
  const loadOblix = async (panel: NotebookPanel): Promise<string | null> => {
    const kernel = panel.sessionContext.session?.kernel;
    if (!kernel) {
      return 'the notebook has no running kernel';
    }
    const reply = await kernel.requestExecute({
      code: LOAD_CODE,
      silent: true,
      store_history: false,
      allow_stdin: false
    }).done;
    const content = reply.content;
    return content.status === 'ok'
      ? null
      : content.status === 'error'
        ? `${content.ename}: ${content.evalue}`
        : content.status;
  };

  /**
   * Ask the kernel for the chat and show what came of it. When Oblix is not
   * loaded there, load it if this notebook allows that, else offer to; `mayLoad`
   * is false after a load, so that a kernel without Oblix installed is not
   * asked forever.
   */
  const connect = async (
    panel: NotebookPanel,
    sidebar: ChatSidebar,
    mayLoad = true
  ): Promise<void> => {
    const link = links.get(panel);
    if (!link || sidebar.isDisposed || asking.has(panel)) {
      return; // one request at a time: the link's state changes while it is answered
    }
    asking.add(panel);
    let result;
    try {
      // A chat restored with the page comes back before its kernel session.
      await panel.sessionContext.ready.catch(() => undefined);
      result = await link.requestChat();
    } finally {
      asking.delete(panel);
    }
    // 'sent': the kernel's reply arrives as a chatWidget emission.
    if (result === 'no-kernel' && !sidebar.connected) {
      awaitingKernel.add(panel);
      sidebar.showNotice(
        `${panel.context.localPath} has no running kernel: start one and the chat connects.`
      );
    } else if (result === 'not-loaded') {
      const path = panel.context.path;
      const load = async (remember: boolean): Promise<void> => {
        if (remember) {
          await autoload.allow(path);
        }
        sidebar.showNotice('Loading Oblix in the kernel…');
        const failure = await loadOblix(panel);
        if (failure) {
          sidebar.showNotice(`Oblix could not be loaded in the kernel: ${failure}`);
          return;
        }
        link.retry();
        await connect(panel, sidebar, false);
      };
      if (mayLoad && (await autoload.allows(path))) {
        await load(false);
      } else if (mayLoad) {
        sidebar.showNotice(
          `Oblix is not loaded in the kernel of ${panel.context.localPath}.`,
          { label: 'Load Oblix', onClick: remember => void load(remember), rememberable: true }
        );
      } else {
        sidebar.showNotice(
          `Oblix was loaded but the kernel of ${panel.context.localPath} did not answer: run ${LOAD_CODE} in a cell.`
        );
      }
    }
  };

  const track = (panel: NotebookPanel): void => {
    if (links.has(panel)) {
      return;
    }
    const link = new SessionLink(panel);
    links.set(panel, link);
    const actions = new CodeBlockActions(panel);
    const approvals = new ApprovalWatch(
      panel,
      () => sidebars.get(panel)?.node ?? null
    );
    // The kernel names the chat widget in reply to 'open_chat'.
    link.chatWidget.connect((_, modelId) => {
      void sidebarFor(panel, false)
        .showModel(modelId)
        .catch(reason => {
          console.error('oblix-jupyter: cannot render the chat widget', reason);
        });
    });
    // After a restart the widget model is gone: say so, and reconnect when
    // the new kernel is idle (the link opens its comm again by itself).
    link.kernelReset.connect(() => {
      approvals.expireAll();
      const sidebar = sidebars.get(panel);
      if (sidebar?.connected) {
        sidebar.showNotice('The kernel restarted: the chat reconnects when it is back.');
        awaitingKernel.add(panel);
      }
    });
    link.stateChanged.connect((_, linkState) => {
      const sidebar = sidebars.get(panel);
      // 'ready' also follows a %load_ext the user ran in a cell.
      const due =
        (linkState === 'ready' && !sidebar?.connected) ||
        (linkState === 'failed' && awaitingKernel.has(panel));
      if (sidebar && due) {
        awaitingKernel.delete(panel);
        void connect(panel, sidebar);
      }
    });
    panel.disposed.connect(() => {
      link.dispose();
      actions.dispose();
      approvals.dispose();
      links.delete(panel);
      sidebars.get(panel)?.dispose();
    });
  };
  tracker.forEach(track);
  tracker.widgetAdded.connect((_, panel) => track(panel));
  document.addEventListener('keydown', sendOnEnter, true);

  /** The notebook at `path`, once it is open (a restored chat may come back before its notebook). */
  const notebookAt = (path: string): Promise<NotebookPanel | null> => {
    const open = tracker.find(panel => panel.context.path === path);
    if (open) {
      return Promise.resolve(open);
    }
    return new Promise(resolve => {
      const onAdded = (_: unknown, panel: NotebookPanel): void => {
        if (panel.context.path === path) {
          done(panel);
        }
      };
      const timer = setTimeout(() => done(null), RESTORE_WAIT_MS);
      const done = (panel: NotebookPanel | null): void => {
        clearTimeout(timer);
        tracker.widgetAdded.disconnect(onAdded);
        resolve(panel);
      };
      tracker.widgetAdded.connect(onAdded);
    });
  };

  const findPanel = (args: ReadonlyPartialJSONObject): NotebookPanel | null =>
    typeof args.notebookId === 'string'
      ? tracker.find(panel => panel.id === args.notebookId) ?? null
      : tracker.currentWidget;

  app.commands.addCommand(OPEN_CHAT, {
    label: 'Oblix: open chat',
    caption: "Open this notebook's Oblix chat in the right sidebar",
    icon: chatIcon,
    isEnabled: args => typeof args.notebookPath === 'string' || findPanel(args) !== null,
    execute: async args => {
      // From the layout restorer: the notebook's path, and no focus taken
      // (the restorer itself brings back whichever sidebar was showing).
      const restoring = typeof args.notebookPath === 'string';
      const panel = restoring
        ? await notebookAt(args.notebookPath as string)
        : findPanel(args);
      if (!panel || !links.has(panel)) {
        if (!restoring) {
          Notification.warning('Open a notebook to chat about it.', { autoClose: 5000 });
        }
        return;
      }
      const sidebar = sidebarFor(panel, !restoring);
      if (!sidebar.connected) {
        sidebar.showNotice('Connecting to the kernel…');
      }
      // Not awaited: a restore must not hold up the application's start.
      void connect(panel, sidebar);
    }
  });
  palette?.addItem({ command: OPEN_CHAT, category: 'Oblix' });
  app.docRegistry.addWidgetExtension(
    'Notebook',
    new ChatButtonExtension(app.commands)
  );
  void restorer?.restore(chats, {
    command: OPEN_CHAT,
    args: sidebar => ({ notebookPath: sidebar.notebook.context.path }),
    name: sidebar => sidebar.notebook.context.path
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Links notebooks to the oblix_jupyter kernel extension, shows its chat and gives answers\' code blocks Copy and Insert below.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer, IStateDB],
  activate
};

export default plugin;
