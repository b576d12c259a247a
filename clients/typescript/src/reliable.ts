/**
 * Reliable delivery's bookkeeping (docs/PROTOCOL.md, "Reliable delivery"):
 * numbering the frames this client sends and keeping them until the hub
 * acknowledges them, remembering the highest frame from the hub handed to
 * the application, and acknowledging it (on every frame written, or with a
 * separate `Ack` after 64 frames or 10 ms). The connection does the
 * writing; this class decides what and when.
 *
 * @module
 */

import type { Frame } from "./gen/switchboard/v1/switchboard_pb.js";
import { Disconnected } from "./errors.js";
import { ACK_DELAY_MS, ACK_EVERY } from "./frames.js";

/** A numbered frame kept until the hub acknowledges it. */
export interface Retained {
  /** Its seq. */
  seq: bigint;
  /** What it carries. */
  kind: Frame["kind"];
}

/** Both directions' sequence state of one session. @internal */
export class Reliable {
  /** The seq of the last numbered frame sent. */
  outSeq = 0n;
  /** Numbered frames sent and not yet acknowledged by the hub, in seq order. */
  retained: Retained[] = [];
  /** The highest seq from the hub handed to the application. */
  lastReceived = 0n;
  /** The highest acknowledgement sent to the hub. */
  private lastAckSent = 0n;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private waiters: Array<{ upTo: bigint; resolve: () => void; reject: (e: Disconnected) => void }> = [];

  /**
   * @param sendAck - writes a separate `Ack{up_to}`
   * @param canAck - whether a separate `Ack` can be written now (connected, not closed)
   */
  constructor(
    private readonly sendAck: (upTo: bigint) => void,
    private readonly canAck: () => boolean,
  ) {}

  /** Numbers a frame about to be sent and keeps it; returns its seq. */
  number(kind: Frame["kind"]): bigint {
    const seq = ++this.outSeq;
    this.retained.push({ seq, kind });
    return seq;
  }

  /** The hub took our frames up to `upTo`: forget them. */
  acknowledged(upTo: bigint): void {
    let n = 0;
    while (n < this.retained.length && this.retained[n]!.seq <= upTo) n++;
    if (n > 0) this.retained.splice(0, n);
    if (this.waiters.length > 0) this.wake();
  }

  /** A resumed session: the kept frames the hub did not take (`seq > hubLastReceived`), to write again in order. */
  toResend(hubLastReceived: bigint): Retained[] {
    this.retained = this.retained.filter((r) => r.seq > hubLastReceived);
    return this.retained;
  }

  /**
   * A fresh session: nothing kept, nothing received. The kept frames'
   * outcome is unknown (the old hub may or may not have handled them), so
   * {@link whenAcknowledged} waiters still waiting for some of them fail
   * with {@link Disconnected}, saying how many.
   *
   * @returns how many kept frames were forgotten
   */
  reset(): number {
    const dropped = this.retained;
    this.retained = [];
    for (const w of this.waiters) {
      const n = dropped.filter((r) => r.seq <= w.upTo).length;
      w.reject(
        new Disconnected(
          `the hub did not resume the session (a new hub, or the resume window ended): the outcome of ${n} sent frame${n === 1 ? "" : "s"} not yet acknowledged is unknown`,
        ),
      );
    }
    this.waiters = [];
    this.lastReceived = 0n;
    this.lastAckSent = 0n;
    return dropped.length;
  }

  /** Whether a frame from the hub with this seq was handled already (sent again after a resume). */
  isDuplicate(seq: bigint): boolean {
    return seq !== 0n && seq <= this.lastReceived;
  }

  /** The application took the hub's frame `seq`: acknowledge it at once after 64 seqs, else 10 ms later unless a frame carries it meanwhile. */
  took(seq: bigint): void {
    this.lastReceived = seq;
    if (this.lastReceived - this.lastAckSent >= ACK_EVERY) {
      this.sendAck(this.lastReceived);
      return;
    }
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      if (this.canAck() && this.lastReceived > this.lastAckSent) this.sendAck(this.lastReceived);
    }, ACK_DELAY_MS);
  }

  /** A frame carrying `acked` was written. */
  carried(acked: bigint): void {
    if (acked > this.lastAckSent) this.lastAckSent = acked;
  }

  /** Whether every numbered frame sent was acknowledged. */
  get settled(): boolean {
    return this.retained.length === 0;
  }

  /**
   * Resolves once the hub acknowledged every frame numbered so far;
   * rejects with {@link Disconnected} when a fresh session forgets some of
   * them ({@link reset}).
   */
  whenAcknowledged(): Promise<void> {
    const upTo = this.outSeq;
    if (this.retained.length === 0 || this.retained[0]!.seq > upTo) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ upTo, resolve, reject }));
  }

  /** Stops the acknowledgement timer (the connection closed). */
  stop(): void {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
  }

  private wake(): void {
    const firstKept = this.retained.length > 0 ? this.retained[0]!.seq : this.outSeq + 1n;
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (w.upTo < firstKept) w.resolve();
      else still.push(w);
    }
    this.waiters = still;
  }
}
