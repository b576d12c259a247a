/**
 * Typed errors. Every failure the client reports is a {@link SwitchboardError};
 * errors the hub sends are mapped from their `ErrorCode` to a subclass
 * (docs/PROTOCOL.md, "Error codes"), so programs can branch with
 * `instanceof` (`err instanceof NoSuchClient`) or on {@link SwitchboardError.code}.
 *
 * @module
 */

import { ErrorCode } from "./gen/switchboard/v1/switchboard_pb.js";

export { ErrorCode };

/** Base class of every error this package throws or rejects with. */
export class SwitchboardError extends Error {
  /** The protocol's error code (`ErrorCode.UNSPECIFIED` for local failures without one). */
  readonly code: ErrorCode;

  /**
   * @param message - a one-line explanation for humans
   * @param code - the protocol error code, when there is one
   * @param options - the underlying cause, if any
   */
  constructor(message: string, code: ErrorCode = ErrorCode.ERROR_CODE_UNSPECIFIED, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }

  /** The code's name as in the .proto (`"NO_SUCH_CLIENT"`), or the number when unknown. */
  get codeName(): string {
    return ErrorCode[this.code] ?? String(this.code);
  }
}

/** The hub sent bytes that break the protocol (undecodable, oversized, out of order), or refused ours (`BAD_FRAME`). */
export class ProtocolError extends SwitchboardError {}
/** The hub speaks another protocol version (`UNSUPPORTED_VERSION`). */
export class UnsupportedVersion extends SwitchboardError {}
/** The hub did not accept our proof: wrong token or key (`AUTH_FAILED`). */
export class AuthFailed extends SwitchboardError {}
/** The hub's proof did not verify: it does not know the key (wrong token, or an impostor). Nothing was sent to it. */
export class HubUnverified extends SwitchboardError {}
/** The handshake took too long (`HANDSHAKE_TIMEOUT`). */
export class HandshakeTimeout extends SwitchboardError {}
/** The target client id is not registered (`NO_SUCH_CLIENT`). */
export class NoSuchClient extends SwitchboardError {}
/** No answer in time (`TIMEOUT`, or the client's own timer). */
export class Timeout extends SwitchboardError {}
/** The target left before answering or taking the message (`TARGET_GONE`). */
export class TargetGone extends SwitchboardError {}
/** The target's queue stayed full (`QUEUE_FULL`). */
export class QueueFull extends SwitchboardError {}
/** A limit was reached (`LIMIT_EXCEEDED`). */
export class LimitExceeded extends SwitchboardError {}
/** An argument is not valid: topic, pattern, key, id (`INVALID_ARGUMENT`). */
export class InvalidArgument extends SwitchboardError {}
/** A compare-and-set found another version (`VERSION_MISMATCH`). */
export class VersionMismatch extends SwitchboardError {}
/** No such key, subscription or watch (`NOT_FOUND`). */
export class NotFound extends SwitchboardError {}
/** A newer connection registered this client id (`ID_TAKEN_OVER`); do not reconnect with the same id. */
export class IdTakenOver extends SwitchboardError {}
/** The hub is stopping (`SHUTTING_DOWN`). */
export class ShuttingDown extends SwitchboardError {}
/** The hub is an old primary that a standby replaced (`FENCED`). */
export class Fenced extends SwitchboardError {}
/** The hub does not take this kind or feature (`UNSUPPORTED`). */
export class Unsupported extends SwitchboardError {}
/** The client did not read fast enough (`SLOW_CONSUMER`). */
export class SlowConsumer extends SwitchboardError {}
/** The hub's permission policy refused the command (`FORBIDDEN`). */
export class Forbidden extends SwitchboardError {}
/** A bug or unexpected condition on the hub (`INTERNAL`), or an error code this client does not know. */
export class Internal extends SwitchboardError {}
/** The target does not take this kind of message now (`NOT_LISTENING`). */
export class NotListening extends SwitchboardError {}
/** No service subscription matches the request's service subject (`NO_RESPONDERS`). */
export class NoResponders extends SwitchboardError {}
/** The connection is closed or was lost; the command's outcome is unknown unless it was answered. */
export class Disconnected extends SwitchboardError {}
/** The replier's application failed the request (`Reply.is_error`); the message is its explanation. */
export class RemoteError extends SwitchboardError {
  /** The replier's client id. */
  readonly from: string;

  /**
   * @param message - the replier's explanation (the reply payload as UTF-8)
   * @param from - the replier's client id
   */
  constructor(message: string, from: string) {
    super(message);
    this.from = from;
  }
}

type ErrorClass = new (message: string, code: ErrorCode) => SwitchboardError;

const BY_CODE: Partial<Record<ErrorCode, ErrorClass>> = {
  [ErrorCode.BAD_FRAME]: ProtocolError,
  [ErrorCode.UNSUPPORTED_VERSION]: UnsupportedVersion,
  [ErrorCode.AUTH_FAILED]: AuthFailed,
  [ErrorCode.HANDSHAKE_TIMEOUT]: HandshakeTimeout,
  [ErrorCode.NO_SUCH_CLIENT]: NoSuchClient,
  [ErrorCode.TIMEOUT]: Timeout,
  [ErrorCode.TARGET_GONE]: TargetGone,
  [ErrorCode.QUEUE_FULL]: QueueFull,
  [ErrorCode.LIMIT_EXCEEDED]: LimitExceeded,
  [ErrorCode.INVALID_ARGUMENT]: InvalidArgument,
  [ErrorCode.VERSION_MISMATCH]: VersionMismatch,
  [ErrorCode.NOT_FOUND]: NotFound,
  [ErrorCode.ID_TAKEN_OVER]: IdTakenOver,
  [ErrorCode.SHUTTING_DOWN]: ShuttingDown,
  [ErrorCode.FENCED]: Fenced,
  [ErrorCode.UNSUPPORTED]: Unsupported,
  [ErrorCode.SLOW_CONSUMER]: SlowConsumer,
  [ErrorCode.FORBIDDEN]: Forbidden,
  [ErrorCode.INTERNAL]: Internal,
  [ErrorCode.NOT_LISTENING]: NotListening,
  [ErrorCode.NO_RESPONDERS]: NoResponders,
};

/**
 * The typed error for a code the hub sent in an `Error` or `Goodbye` frame.
 * A code this client does not know becomes {@link Internal} (the protocol
 * says to treat it as a failure of the command it answers), keeping the number.
 *
 * @param code - the frame's code
 * @param message - the frame's message
 */
export function errorFromCode(code: ErrorCode, message: string): SwitchboardError {
  const cls = BY_CODE[code] ?? Internal;
  const name = ErrorCode[code] ?? `error code ${code}`;
  return new cls(message ? `${name}: ${message}` : name, code);
}
