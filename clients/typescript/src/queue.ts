/**
 * A bounded queue read as an async iterator: the link between the
 * connection's reader (which pushes) and application code (which iterates).
 *
 * @module
 */

/**
 * What a stream does when its application does not keep up and its buffer
 * is full (the Rust client's `Overflow`, same names):
 *
 * - `"block"` (the default): push back. The connection stops handing frames
 *   on (and, on a socket that can pause, stops reading) until the
 *   application takes an item; frames behind the full stream wait, in
 *   order, unacknowledged. Nothing is lost, but everything on the
 *   connection waits (replies, other streams), and past its limits the hub
 *   applies its slow-consumer policy (a `dropped` event, from `Flow`).
 * - `"dropNewest"`: the item that does not fit is dropped and counted.
 * - `"dropOldest"`: the oldest buffered item is dropped to make room, and counted.
 *
 * Drops are counted on the stream (`dropped`) and announced as a
 * `slowConsumer` event.
 */
export type Overflow = "block" | "dropNewest" | "dropOldest";

/** What became of a pushed item: queued, queued or refused with one item lost, or refused because the stream is full and blocks. */
export type Pushed = "queued" | "dropped" | "full";

/** A bounded buffer with one async-iterator reader and an {@link Overflow} policy. */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private failure: unknown = undefined;
  /** Items dropped because the buffer was full. */
  dropped = 0;

  /** Called after the reader took an item or left: room for a blocked producer. */
  onSpace: (() => void) | undefined;

  /**
   * @param capacity - how many items the buffer holds
   * @param onReturn - called once when the reader leaves the loop early (`break`, `return`)
   * @param overflow - what a push to a full buffer does (default `"dropOldest"`, for internal streams)
   */
  constructor(
    private readonly capacity: number,
    private readonly onReturn?: () => void | Promise<void>,
    public overflow: Overflow = "dropOldest",
  ) {}

  /**
   * Adds an item. A full buffer applies the overflow policy: `"block"`
   * refuses it (`"full"`: push it again after {@link onSpace}), the drop
   * policies drop one item and count it (`"dropped"`). Ignored after the end.
   */
  push(item: T): Pushed {
    if (this.ended) return "queued";
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: item, done: false });
      return "queued";
    }
    if (this.items.length >= this.capacity) {
      if (this.overflow === "block") return "full";
      this.dropped++;
      if (this.overflow === "dropNewest") return "dropped";
      this.items.shift();
      this.items.push(item);
      return "dropped";
    }
    this.items.push(item);
    return "queued";
  }

  /** Items buffered now. */
  get length(): number {
    return this.items.length;
  }

  /** Ends the stream: the reader gets what is buffered, then the end (or `error`, if given). */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = error;
    if (this.waiter && this.items.length === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      if (error !== undefined) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** Whether {@link end} was called. */
  get isEnded(): boolean {
    return this.ended;
  }

  /** The next item, waiting for one if none is buffered. */
  next(): Promise<IteratorResult<T>> {
    const item = this.items.shift();
    if (item !== undefined) {
      // Only a full buffer can have held the connection up.
      if (this.onSpace && this.items.length + 1 >= this.capacity) queueMicrotask(this.onSpace);
      return Promise.resolve({ value: item, done: false });
    }
    if (this.ended) {
      if (this.failure !== undefined) {
        const f = this.failure;
        this.failure = undefined;
        return Promise.reject(f);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    if (this.waiter) return Promise.reject(new Error("only one reader may wait on a stream at a time"));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Leaves the loop: ends the stream and runs the `onReturn` hook once. */
  async return(): Promise<IteratorResult<T>> {
    const first = !this.ended;
    this.items.length = 0;
    this.end();
    if (this.onSpace) queueMicrotask(this.onSpace);
    if (first && this.onReturn) await this.onReturn();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
