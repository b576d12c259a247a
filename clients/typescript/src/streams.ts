/**
 * The streams a client hands out: subscriptions and watches, async
 * iterators over a bounded buffer; leaving the loop stops them at the hub.
 *
 * @module
 */

import type { Message } from "./messages.js";
import type { AsyncQueue } from "./queue.js";

/** A live subscription: iterate it for the messages; leaving the loop unsubscribes. */
export class Subscription implements AsyncIterable<Message> {
  /**
   * @internal
   * @param id - the subscription id
   * @param pattern - the pattern subscribed to
   * @param queue - the buffer the reader fills
   */
  constructor(
    readonly id: bigint,
    readonly pattern: string,
    private readonly queue: AsyncQueue<Message>,
  ) {}

  /** Messages dropped because the buffer was full. */
  get dropped(): number {
    return this.queue.dropped;
  }

  /** Unsubscribes (waiting for the hub's confirmation) and ends the iteration. */
  async unsubscribe(): Promise<void> {
    await this.queue.return();
  }

  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return this.queue;
  }
}

/** A stream of items from the hub (a kv watch, presence): iterate it; leaving the loop stops it at the hub. */
export class Watch<T> implements AsyncIterable<T> {
  /**
   * @internal
   * @param queue - the buffer the reader fills
   */
  constructor(private readonly queue: AsyncQueue<T>) {}

  /** Items dropped because the buffer was full. */
  get dropped(): number {
    return this.queue.dropped;
  }

  /** Stops the watch at the hub and ends the iteration. */
  async stop(): Promise<void> {
    await this.queue.return();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return this.queue;
  }
}
