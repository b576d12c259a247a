/**
 * `@switchboard/client`: a switchboard client for browsers and Node ≥ 20,
 * speaking the native protocol over the hub's WebSocket (`/v1/ws`).
 *
 * @packageDocumentation
 */

export {
  Client,
  IncomingRequest,
  Message,
  ReplyMessage,
  Subscription,
  Watch,
  type ClientEvent,
  type ClientState,
  type ConnectOptions,
  type Handler,
  type Overflow,
  type StreamOptions,
  type Headers,
  type KvEntry,
  type KvUpdate,
  type PresenceEvent,
  type Payload,
  type RequestOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export * from "./errors.js";
export { clientProof, hubProof, httpToken, keyFromToken, keyId } from "./auth.js";
export type { ClientInfo, HubIdentity, Status } from "./gen/switchboard/v1/switchboard_pb.js";
