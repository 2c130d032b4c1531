/**
 * The two things an approval box (oblix_jupyter/frontends/approval.py) needs
 * from the page, because the kernel cannot do them itself:
 *
 * - Stop while approved code runs: the code runs on the kernel's main thread,
 *   which takes no widget click until it is done, so a button with the class
 *   `oblix-interrupt` (the box's Stop, and the chat panel's Stop meanwhile)
 *   interrupts the notebook's kernel from here, as the toolbar's Stop does.
 *   The click goes no further: queued behind the run, it would reach the
 *   kernel afterwards and stop the answer the model is about to continue.
 * - "Expired" after a restart: the boxes' widgets died with the kernel, and a
 *   dead button must not look as if it could still run the code (a box
 *   already decided keeps saying what came of it).
 */

import { NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';

const UNDECIDED = '.oblix-approval:not(.oblix-decided)';
export const RESTARTED =
  'Expired: the kernel restarted, so this code can no longer run.';

export class ApprovalWatch implements IDisposable {
  /** `sidebarNode` gives the notebook's chat panel, where it has one. */
  constructor(
    private readonly _panel: NotebookPanel,
    private readonly _sidebarNode: () => HTMLElement | null
  ) {
    document.addEventListener('click', this._onClick, true);
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (!this._disposed) {
      this._disposed = true;
      document.removeEventListener('click', this._onClick, true);
    }
  }

  /** Mark every approval box of this notebook (its cells and its chat) as expired. */
  expireAll(): void {
    for (const root of this._roots()) {
      root.querySelectorAll<HTMLElement>(UNDECIDED).forEach(box => {
        box.classList.add('oblix-expired');
        box
          .querySelectorAll<HTMLButtonElement | HTMLTextAreaElement>(
            'button, textarea'
          )
          .forEach(control => {
            control.disabled = true;
          });
        const status = box.querySelector<HTMLElement>('.oblix-approval-status');
        if (status) {
          status.textContent = RESTARTED;
          status.style.display = ''; // hidden while it had nothing to say
        }
      });
    }
  }

  private _roots(): HTMLElement[] {
    const sidebar = this._sidebarNode();
    return sidebar ? [this._panel.node, sidebar] : [this._panel.node];
  }

  private readonly _onClick = (event: MouseEvent): void => {
    const target = event.target as Element | null;
    const button = target?.closest?.('.oblix-interrupt');
    if (!button || !this._roots().some(root => root.contains(button))) {
      return;
    }
    event.stopImmediatePropagation();
    event.preventDefault();
    void this._panel.sessionContext.session?.kernel?.interrupt();
  };

  private _disposed = false;
}
