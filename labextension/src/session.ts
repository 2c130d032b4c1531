/**
 * One `oblix.session` comm per notebook panel.
 *
 * The kernel side (the `oblix_jupyter` IPython extension) cannot know which
 * notebook file it runs for, so the front end tells it over a comm: on open,
 * and again whenever the file is renamed or moved. The same comm carries the
 * "open chat" request and the kernel's reply naming the chat widget.
 *
 * Message contract (all in `msg.content.data`):
 *   front end -> kernel   comm_open {notebook_path}
 *                         {action: 'path', notebook_path}
 *                         {action: 'open_chat'}
 *   kernel -> front end   {action: 'ack'}          (path registered)
 *                         {action: 'chat_widget', model_id}
 *                         {action: 'insert_cell', code}  (a new code cell below the active one)
 *                         {action: 'keep_output', model_id, data}  (a static copy, beside
 *                           the widget model_id shows in a cell, for the saved notebook)
 */

import type { ICodeCellModel } from '@jupyterlab/cells';
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import {
  CommsOverSubshells,
  Kernel,
  KernelMessage
} from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

/** The MIME type of an ipywidgets view in a cell's outputs. */
const WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json';

export const COMM_TARGET = 'oblix.session';

/**
 * - `waiting`: a (new or restarted) kernel needs a comm; open when it is idle.
 * - `opening`: comm_open sent, no ack yet.
 * - `ready`:   the kernel acked; path updates and chat requests can flow.
 * - `failed`:  the kernel closed the comm (target not registered, i.e. the
 *              IPython extension is not loaded yet). Retried once after the
 *              next cell execution, e.g. the one running `%load_ext`.
 */
export type LinkState = 'waiting' | 'opening' | 'ready' | 'failed';

/** Outcome of an "open chat" request, for the command to report. */
export type ChatRequestResult = 'sent' | 'not-loaded' | 'no-kernel';

export class SessionLink implements IDisposable {
  constructor(panel: NotebookPanel) {
    this._panel = panel;
    const { sessionContext } = panel;
    sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    sessionContext.statusChanged.connect(this._onStatusChanged, this);
    panel.context.pathChanged.connect(this._syncPath, this);
    // A static signal: it fires for every notebook, so filter on ours.
    NotebookActions.executed.connect(this._onExecuted, this);
    // The kernel may already be idle (e.g. a notebook reopened on a running
    // kernel), in which case no status change would trigger the first open.
    sessionContext.ready.then(() => this._maybeOpen()).catch(() => undefined);
    this._maybeOpen();
  }

  /** Emits the ipywidgets model id of the chat widget the kernel wants shown. */
  get chatWidget(): ISignal<this, string> {
    return this._chatWidget;
  }

  /** Emits each new state: `ready` once the kernel acked, `failed` when it is not loaded there. */
  get stateChanged(): ISignal<this, LinkState> {
    return this._stateChanged;
  }

  /** Emits when the kernel restarts or changes: its widgets are gone. */
  get kernelReset(): ISignal<this, void> {
    return this._kernelReset;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /**
   * Ask the kernel for the chat widget. The answer arrives later as a
   * `chatWidget` emission; the returned promise only tells whether the request
   * could be sent (it waits for the comm if it is still being opened).
   */
  requestChat(): Promise<ChatRequestResult> {
    if (this._state === 'ready' && this._comm) {
      const sent = this._send({ action: 'open_chat' });
      return Promise.resolve(sent ? 'sent' : 'no-kernel');
    }
    if (!this._kernel()) {
      return Promise.resolve('no-kernel');
    }
    // An explicit request is worth an attempt even if the kernel is busy:
    // the comm_open simply queues behind the running cell.
    if (this._state !== 'opening') {
      this._open();
    }
    return new Promise(resolve => this._chatWaiters.push(resolve));
  }

  /**
   * Open the comm again after something other than a cell run may have
   * loaded the extension (the chat's own "Load Oblix" button): at once if the
   * kernel is idle, else on its next idle.
   */
  retry(): void {
    if (this._state === 'failed') {
      this._retryPending = true;
      this._maybeOpen();
    }
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._closeComm();
    this._settleChatWaiters('no-kernel');
    Signal.clearData(this);
  }

  private _kernel(): Kernel.IKernelConnection | null {
    return this._panel.sessionContext.session?.kernel ?? null;
  }

  private _pathInfo(): { notebook_path: string } {
    // localPath drops any drive prefix, leaving the path relative to the
    // server root, which is what the kernel can resolve against its cwd.
    return { notebook_path: this._panel.context.localPath };
  }

  private _onKernelChanged(): void {
    this._reset();
    this._maybeOpen();
  }

  private _onStatusChanged(_: unknown, status: Kernel.Status): void {
    switch (status) {
      case 'restarting':
      case 'autorestarting':
      case 'starting':
      case 'dead':
        // A restart clears every comm of the connection without calling
        // onClose, so the state has to be reset from here.
        if (this._state !== 'waiting' || this._comm) {
          this._reset();
        }
        break;
      case 'idle':
        this._maybeOpen();
        break;
    }
  }

  private _onExecuted(_: unknown, args: { notebook: unknown }): void {
    if (args.notebook !== this._panel.content || this._state !== 'failed') {
      return;
    }
    // `executed` fires after the cell's idle status, so try right away if
    // the kernel is still idle, else on its next idle.
    this._retryPending = true;
    this._maybeOpen();
  }

  private _maybeOpen(): void {
    const due =
      this._state === 'waiting' ||
      (this._state === 'failed' && this._retryPending);
    if (due && this._kernel()?.status === 'idle') {
      this._open();
    }
  }

  private _open(): void {
    const kernel = this._kernel();
    if (this._isDisposed || !kernel) {
      return;
    }
    this._closeComm();
    this._setState('opening');
    this._retryPending = false;
    const info = this._pathInfo();
    let comm: Kernel.IComm;
    try {
      comm = kernel.createComm(COMM_TARGET);
      // JupyterLab (>= 4.4, default "perCommTarget") sends a comm's messages
      // to a kernel subshell once that subshell exists, but this comm_open
      // leaves before it does: the kernel (ipykernel >= 7) would then run
      // our handlers on two threads. Keeping this comm on the main shell
      // gives the kernel side one thread and the order in which we send.
      comm.commsOverSubshells = CommsOverSubshells.Disabled;
      comm.onMsg = msg => this._onMsg(comm, msg);
      comm.onClose = () => this._onClose(comm);
      // comm_open has no reply; the future only fails if the kernel goes
      // away, which the status handler deals with.
      comm.open(info).done.catch(() => undefined);
    } catch {
      // Kernel disposed or restarting under us: quietly try again later.
      this._setState('failed');
      this._settleChatWaiters('not-loaded');
      return;
    }
    this._comm = comm;
    this._sentPath = info.notebook_path;
  }

  private _onMsg(comm: Kernel.IComm, msg: KernelMessage.ICommMsgMsg): void {
    if (comm !== this._comm) {
      return;
    }
    const data = msg.content.data as {
      action?: string;
      model_id?: string;
      code?: string;
      data?: unknown;
    };
    switch (data.action) {
      case 'ack':
        this._setState('ready');
        // The file may have been renamed while the open was in flight.
        this._syncPath();
        if (this._chatWaiters.length) {
          this._settleChatWaiters(
            this._send({ action: 'open_chat' }) ? 'sent' : 'no-kernel'
          );
        }
        break;
      case 'chat_widget':
        if (typeof data.model_id === 'string') {
          this._chatWidget.emit(data.model_id);
        }
        break;
      case 'insert_cell':
        // "Insert code" in the chat panel: the kernel cannot edit the notebook itself.
        if (typeof data.code === 'string') {
          const notebook = this._panel.content;
          NotebookActions.insertBelow(notebook);
          notebook.activeCell?.model.sharedModel.setSource(data.code);
        }
        break;
      case 'keep_output':
        if (typeof data.model_id === 'string') {
          this._keepOutput(data.model_id, data.data);
        }
        break;
    }
  }

  /**
   * Add a static copy of what a finished cell shows in widgets (an answer that
   * went on below an approval box) to that cell's outputs: widgets are not
   * saved with the notebook. Only text MIME types are taken; the copy is
   * rendered like any other output of the kernel, and hidden by our style while
   * the live widgets are there.
   */
  private _keepOutput(modelId: string, bundle: unknown): void {
    if (typeof bundle !== 'object' || bundle === null) {
      return;
    }
    const data: Record<string, string> = {};
    for (const mime of ['text/html', 'text/plain']) {
      const value = (bundle as Record<string, unknown>)[mime];
      if (typeof value === 'string') {
        data[mime] = value;
      }
    }
    for (const cell of this._panel.content.widgets) {
      const outputs = (cell.model as ICodeCellModel).outputs;
      if (cell.model.type !== 'code' || !outputs) {
        continue;
      }
      for (let index = 0; index < outputs.length; index++) {
        const view = outputs.get(index).data[WIDGET_VIEW] as
          | { model_id?: string }
          | undefined;
        if (view?.model_id === modelId) {
          outputs.add({
            output_type: 'display_data',
            data,
            metadata: { oblix: { kept: modelId } }
          });
          return;
        }
      }
    }
  }

  private _onClose(comm: Kernel.IComm): void {
    if (comm !== this._comm) {
      return;
    }
    // Closed before (or after) the ack: the kernel side is not (or no
    // longer) listening. Wait for a cell run before trying again.
    this._comm = null;
    this._setState('failed');
    this._settleChatWaiters('not-loaded');
  }

  private _syncPath(): void {
    if (this._state !== 'ready') {
      return; // the next comm_open carries the current path anyway
    }
    const info = this._pathInfo();
    if (info.notebook_path !== this._sentPath) {
      if (this._send({ action: 'path', ...info })) {
        this._sentPath = info.notebook_path;
      }
    }
  }

  private _send(data: { [key: string]: string }): boolean {
    if (!this._comm || this._comm.isDisposed) {
      return false;
    }
    try {
      this._comm.send(data).done.catch(() => undefined);
      return true;
    } catch {
      return false;
    }
  }

  private _setState(state: LinkState): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _reset(): void {
    this._closeComm();
    this._setState('waiting');
    this._retryPending = false;
    this._settleChatWaiters('no-kernel');
    this._kernelReset.emit();
  }

  private _closeComm(): void {
    const comm = this._comm;
    this._comm = null; // first, so that onClose sees a stale comm
    if (comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch {
        // the kernel connection is already gone; nothing to tell it
      }
    }
  }

  private _settleChatWaiters(result: ChatRequestResult): void {
    const waiters = this._chatWaiters;
    this._chatWaiters = [];
    waiters.forEach(resolve => resolve(result));
  }

  private _panel: NotebookPanel;
  private _comm: Kernel.IComm | null = null;
  private _state: LinkState = 'waiting';
  private _retryPending = false;
  private _sentPath = '';
  private _chatWaiters: Array<(result: ChatRequestResult) => void> = [];
  private _isDisposed = false;
  private _chatWidget = new Signal<this, string>(this);
  private _kernelReset = new Signal<this, void>(this);
  private _stateChanged = new Signal<this, LinkState>(this);
}
