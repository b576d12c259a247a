/**
 * A bounded queue read as an async iterator: the link between the
 * connection's reader (which pushes) and application code (which iterates).
 *
 * @module
 */

/** A bounded buffer with one async-iterator reader. When full, the oldest item is dropped and counted. */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private failure: unknown = undefined;
  /** Items dropped because the buffer was full. */
  dropped = 0;

  /**
   * @param capacity - how many items the buffer holds
   * @param onReturn - called once when the reader leaves the loop early (`break`, `return`)
   */
  constructor(
    private readonly capacity: number,
    private readonly onReturn?: () => void | Promise<void>,
  ) {}

  /** Adds an item (drops the oldest when full). Ignored after the end. */
  push(item: T): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: item, done: false });
      return;
    }
    if (this.items.length >= this.capacity) {
      this.items.shift();
      this.dropped++;
    }
    this.items.push(item);
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
    if (item !== undefined) return Promise.resolve({ value: item, done: false });
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
    if (first && this.onReturn) await this.onReturn();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
