"""switchboard: an asyncio client of the switchboard message hub.

The Rust client (reliable delivery, resume, discovery, the handshake)
runs underneath on its own threads; every call that waits is awaited and
does not hold the GIL::

    import switchboard

    async with switchboard.connect("worker-1", addr="127.0.0.1:7000", token="s3cret") as client:
        await client.publish("orders.new", b"42")
        reply = await client.request("adder", "1 2", timeout=5)

Replies with headers: a ``serve`` handler returns
``switchboard.Reply(payload, headers={...})`` instead of a payload, and
``await client.request(..., full=True)`` gives the whole :class:`Reply`
(payload, headers, replier) instead of its payload.
"""

import atexit
import collections
import os
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    Iterable,
    List,
    Literal,
    Mapping,
    Optional,
    Tuple,
    Union,
    overload,
)

from . import _native
from ._errors import *  # noqa: F401,F403
from ._errors import __all__ as _errors_all
from ._native import ClientInfo, Event, KvEvent, Message, PresenceChange, Reply, Request, Serving

__all__ = [
    "connect",
    "Connecting",
    "Client",
    "Kv",
    "KvWatch",
    "KvEvent",
    "Inbox",
    "Subscription",
    "Message",
    "Request",
    "Reply",
    "Serving",
    "Payload",
    "Headers",
    "Presence",
    "PresenceChange",
    "ClientInfo",
    "Events",
    "Event",
    "SessionManager",
    "SessionAgent",
    "SessionEvents",
]
__all__ += _errors_all

Payload = Union[bytes, bytearray, str]
"""What a payload may be given as; ``str`` is sent as UTF-8."""

Handler = Callable[[Request], Union[Awaitable[Union[Payload, Reply]], Payload, Reply]]

Headers = Union[Mapping[str, Payload], Iterable[Tuple[str, Payload]]]
"""Headers to send: a mapping, or ``(key, value)`` pairs (a key may repeat)."""


class KvWatch:
    """Changes to a watched key or prefix, an async iterator of :class:`KvEvent`.

    The first event is the current value (when the key exists, with
    ``by == ""``), then every change in order. ``async with`` stops the watch
    at the end.
    """

    def __init__(self, native: "_native.KvWatch") -> None:
        self._native = native

    def __aiter__(self) -> "KvWatch":
        return self

    async def __anext__(self) -> KvEvent:
        event = await self._native.next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def close(self) -> None:
        """Stops watching."""
        await self._native.close()

    async def __aenter__(self) -> "KvWatch":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class Presence:
    """Who is connected: ``current`` (when it started), then an async iterator of
    :class:`PresenceChange` (``kind`` ``"joined"`` or ``"left"``)."""

    def __init__(self, native: "_native.Presence") -> None:
        self._native = native

    @property
    def current(self) -> List[ClientInfo]:
        """The clients connected when presence started, sorted by id."""
        return self._native.current

    def __aiter__(self) -> "Presence":
        return self

    async def __anext__(self) -> PresenceChange:
        change = await self._native.next()
        if change is None:
            raise StopAsyncIteration
        return change

    async def close(self) -> None:
        """Stops watching presence."""
        await self._native.close()


class Events:
    """The client's events (connected, disconnected, resumed, slow consumer, ...),
    an async iterator of :class:`Event`; it ends after the ``"closed"`` event."""

    def __init__(self, native: "_native.Events") -> None:
        self._native = native

    def __aiter__(self) -> "Events":
        return self

    async def __anext__(self) -> Event:
        event = await self._native.next()
        if event is None:
            raise StopAsyncIteration
        return event


class SessionEvents:
    """A session engine's events, an async iterator of :class:`Event`; they end
    once the agent or manager is closed (or dropped).

    ``kind`` is ``"session_started"`` (``session_id``, ``retry_count``,
    ``events`` as ``(code, command_key)`` pairs; a manager's also
    ``device_id`` and ``parameters``), ``"session_ended"``,
    ``"session_failed"`` (``reason``; an agent's also ``retry`` and ``wait``
    in seconds), an agent's ``"inform_accepted"``,
    ``"connection_requested"`` and ``"push_rejected"``, a manager's
    ``"agent_request"`` (``id``, ``method``, ``payload``; answered with an
    empty result), ``"rejected"`` and ``"connection_request_acked"``,
    ``"lagged"`` (``missed``) for a reader that fell behind, or ``"other"``.
    A manager's events carry the agent's client id as ``data["agent"]``.
    """

    def __init__(self, native: "_native.SessionEvents") -> None:
        self._native = native

    def __aiter__(self) -> "SessionEvents":
        return self

    async def __anext__(self) -> Event:
        event = await self._native.next()
        if event is None:
            raise StopAsyncIteration
        return event


class SessionManager:
    """The session engine's manager (ACS-like side), from :meth:`Client.session_manager`."""

    def __init__(self, native: "_native.SessionManager") -> None:
        self._native = native

    async def connection_request(self, agent: str) -> bool:
        """Asks agent ``agent`` to open a session now; ``False`` when it is not
        connected or already in a session."""
        return await self._native.connection_request(agent)

    def events(self) -> SessionEvents:
        """The manager's events from now on, for every agent; the stream ends
        when the manager is closed (after the events sent before) or
        dropped."""
        return SessionEvents(self._native.events())

    async def rpc(self, agent: str, method: str, payload: Payload = b"") -> bytes:
        """Runs ``method`` on agent ``agent`` (its client id), after the RPCs
        pushed to it before; returns the result. Raises :class:`Fault` when
        the agent answered with a fault, :class:`RequestTimeout` without an
        answer in time."""
        return await self._native.rpc(agent, method, payload)

    async def close(self) -> None:
        """Stops the manager: RPCs not answered yet fail with
        :class:`SessionError`, and its event streams end."""
        await self._native.close()


class SessionAgent:
    """The session engine's agent (CPE-like side), from :meth:`Client.session_agent`."""

    def __init__(self, native: "_native.SessionAgent") -> None:
        self._native = native

    async def add_event(self, code: str, command_key: str = "") -> None:
        """Reports an event (e.g. ``"4 VALUE CHANGE"``): a session carrying it
        starts at once."""
        await self._native.add_event(code, command_key)

    async def request(self, method: str, payload: Payload = b"") -> bytes:
        """Sends a request of the agent's own (e.g. ``"TransferComplete"``) in
        its next session (one starts at once) and returns the manager's
        answer. A :class:`SessionManager` answers with an empty payload and
        reports the request as an ``"agent_request"`` event. Raises
        :class:`SessionError` when the agent is closed meanwhile."""
        return await self._native.request(method, payload)

    def events(self) -> SessionEvents:
        """The agent's events from now on."""
        return SessionEvents(self._native.events())

    async def close(self) -> None:
        """Stops the agent."""
        await self._native.close()


RpcHandler = Callable[[str, bytes], Union[Awaitable[Payload], Payload]]


class Inbox:
    """Direct messages and broadcasts to this client, an async iterator of :class:`Message`."""

    def __init__(self, native: "_native.Inbox") -> None:
        self._native = native

    def __aiter__(self) -> "Inbox":
        return self

    async def __anext__(self) -> Message:
        msg = await self._native.next()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def close(self) -> None:
        """Stops taking direct messages (senders then get ``NotListening``)."""
        await self._native.close()


class Kv:
    """The key/value store shared by all clients of the hub (``client.kv``)."""

    def __init__(self, native: "_native.NativeClient") -> None:
        self._native = native

    async def get(self, key: str) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when it is not set."""
        return await self._native.kv_get(key)

    async def set(self, key: str, value: Payload) -> int:
        """Sets ``key`` to ``value``; returns the new version (1 on creation)."""
        return await self._native.kv_set(key, value)

    async def delete(self, key: str) -> bool:
        """Deletes ``key``; returns whether it existed."""
        return await self._native.kv_delete(key)

    async def watch(self, key: str, *, prefix: bool = False) -> KvWatch:
        """Watches ``key`` (with ``prefix=True``, every key starting with it)."""
        return KvWatch(await self._native.kv_watch(key, prefix))


# Most messages a subscription takes from the native stream at once.
_BATCH = 256


class Subscription:
    """Messages published on topics matching a pattern.

    ``await client.subscribe(p)`` subscribes at once and returns the
    subscription; ``async for msg in client.subscribe(p)`` subscribes on the
    first iteration. Iteration ends when the subscription or client ends.

    Iteration takes the messages already waiting in one native call (up to
    256) and returns them one by one without suspending, so a busy
    subscription wakes the event loop once per batch, not per message.
    """

    def __init__(self, native: "_native.NativeClient", pattern: str, options: Dict[str, Any]) -> None:
        self._client = native
        self._pattern = pattern
        self._options = options
        self._sub: Optional[_native.Subscription] = None
        # Messages taken from the native stream in one batch and not yet
        # returned (at most _BATCH - 1): iteration wakes the event loop
        # once per batch, not once per message.
        self._buf: Deque[Message] = collections.deque()

    @property
    def pattern(self) -> str:
        """The subscribed pattern."""
        return self._pattern

    async def _start(self) -> "Subscription":
        if self._sub is None:
            self._sub = await self._client.subscribe(self._pattern, **self._options)
        return self

    def __await__(self) -> Generator[Any, None, "Subscription"]:
        return self._start().__await__()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Message:
        buf = self._buf
        if buf:
            return buf.popleft()
        sub = self._sub
        if sub is None:
            await self._start()
            sub = self._sub
            assert sub is not None
        # Messages already waiting are taken without an awaitable; only
        # when none is does iteration wait (for the next one and those
        # behind it).
        batch = sub.take(_BATCH)
        if not batch:
            if batch is None:
                raise StopAsyncIteration
            batch = await sub.next_batch(_BATCH)
            if batch is None:
                raise StopAsyncIteration
        buf.extend(batch)
        return buf.popleft()

    async def unsubscribe(self) -> None:
        """Ends the subscription at the hub; messages not yet returned are discarded."""
        self._buf.clear()
        if self._sub is not None:
            await self._sub.unsubscribe()


class Client:
    """A client connected to a hub; made by :func:`connect`."""

    def __init__(self, native: "_native.NativeClient") -> None:
        self._native = native
        self.kv = Kv(native)
        """The shared key/value store."""

    @property
    def id(self) -> str:
        """The client id."""
        return self._native.id

    async def publish(self, topic: str, payload: Payload, *, headers: Optional[Headers] = None) -> None:
        """Publishes ``payload`` on ``topic``; returns once the hub confirmed it."""
        await self._native.publish(topic, payload, headers)

    async def publish_nowait(self, topic: str, payload: Payload) -> None:
        """Publishes ``payload`` on ``topic`` without the hub's confirmation.

        Returns once the message is queued on the connection: at once
        (without suspending) while the send queue has room, else when it
        has room again. Nothing tells whether the hub routed it (an invalid
        topic is dropped by the hub); use :meth:`publish` for that. Messages
        published one after another reach subscribers in that order. The
        fastest way to publish; a loop of these never yields to the event
        loop while the queue has room, so a long one should
        ``await asyncio.sleep(0)`` now and then to let other tasks run.
        """
        pending = self._native.publish_nowait(topic, payload)
        if pending is not None:
            await pending

    async def send(self, to: str, payload: Payload, *, headers: Optional[Headers] = None) -> None:
        """Sends a one-way message to client ``to`` (which reads it from :meth:`messages`).

        Raises :class:`NotListening` when ``to`` takes no direct messages.
        """
        await self._native.send(to, payload, headers)

    async def messages(self) -> Inbox:
        """Direct messages (:meth:`send`) and broadcasts to this client, from now on."""
        return Inbox(await self._native.messages())

    # request and request_service return the payload (bytes), or with
    # full=True the whole Reply: one keyword for both methods, and the
    # common case stays a plain ``bytes``; the overloads give each call
    # its precise type.
    @overload
    async def request(
        self,
        to: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: Literal[False] = False,
    ) -> bytes: ...
    @overload
    async def request(
        self,
        to: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: Literal[True],
    ) -> Reply: ...
    @overload
    async def request(
        self,
        to: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: bool,
    ) -> Union[bytes, Reply]: ...
    async def request(
        self,
        to: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: bool = False,
    ) -> Union[bytes, Reply]:
        """Sends a request to client ``to`` and returns its reply's payload, or
        with ``full=True`` the whole :class:`Reply` (``payload``, the
        replier's ``headers`` and its id as ``sender``).

        Raises :class:`RequestTimeout` after ``timeout`` seconds (default: the
        client's request timeout), :class:`NoSuchClient` when ``to`` is not
        connected, :class:`NotListening` when it serves no requests,
        :class:`RemoteError` when its handler failed.
        """
        return await self._native.request(to, payload, timeout, headers, method, False, full)

    @overload
    async def request_service(
        self,
        service: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: Literal[False] = False,
    ) -> bytes: ...
    @overload
    async def request_service(
        self,
        service: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: Literal[True],
    ) -> Reply: ...
    @overload
    async def request_service(
        self,
        service: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: bool,
    ) -> Union[bytes, Reply]: ...
    async def request_service(
        self,
        service: str,
        payload: Payload,
        *,
        timeout: Optional[float] = None,
        headers: Optional[Headers] = None,
        method: Optional[str] = None,
        full: bool = False,
    ) -> Union[bytes, Reply]:
        """Sends a request to one of the clients serving ``service`` (round-robin);
        returns as :meth:`request` does (with ``full=True``, the
        :class:`Reply`'s ``sender`` is the responder the hub picked).

        Raises :class:`NoResponders` when none does.
        """
        return await self._native.request(service, payload, timeout, headers, method, True, full)

    def subscribe(
        self,
        pattern: str,
        *,
        queue_group: Optional[str] = None,
        capacity: Optional[int] = None,
        overflow: Optional[str] = None,
        max_messages: Optional[int] = None,
    ) -> Subscription:
        """Messages on topics matching ``pattern`` (``*`` one level, ``>`` the rest).

        ``queue_group``: each message goes to one member of the group.
        ``capacity``: messages the stream holds (default: the client's
        ``stream_capacity``). ``overflow`` when it is full: ``"block"`` (the
        default: push back, nothing lost), ``"drop_newest"`` or
        ``"drop_oldest"`` (dropped and counted, see :meth:`events`).
        ``max_messages``: the subscription ends by itself after that many.
        """
        options: Dict[str, Any] = dict(
            queue_group=queue_group, capacity=capacity, overflow=overflow, max_messages=max_messages
        )
        return Subscription(self._native, pattern, options)

    async def serve(
        self, handler: Handler, *, concurrency: Optional[int] = None, service: Optional[str] = None
    ) -> Serving:
        """Answers requests to this client with ``handler(request)``.

        The handler (usually ``async def``) returns the reply as bytes or str,
        or as a :class:`Reply` to send headers with it
        (``Reply(payload, headers={"k": "v"})``); an exception becomes an error reply (:class:`RemoteError` for the
        requester). Handlers run on the current event loop and may await
        other requests. Serving lasts until ``stop()`` or :meth:`close`
        (both wait for running handlers to finish and reply). With
        ``service``, answers the requests sent to that service (a name, or a
        pattern with ``*`` and ``>``) by :meth:`request_service` instead.
        """
        return await self._native.serve(handler, concurrency, service)

    async def presence(self) -> Presence:
        """The clients connected now, then who joins and leaves."""
        return Presence(await self._native.presence())

    async def clients(self) -> List[ClientInfo]:
        """The clients connected to the hub now."""
        return await self._native.clients()

    def session_manager(
        self,
        *,
        response_timeout: Optional[float] = None,
        max_in_flight: Optional[int] = None,
        max_rpcs_per_session: Optional[int] = None,
        max_queue: Optional[int] = None,
        max_agents: Optional[int] = None,
        link_queue: Optional[int] = None,
    ) -> SessionManager:
        """Runs the session engine's manager: every client running an agent for
        this client's id is an agent, named by its client id. Raises
        :class:`ClientClosed` when the client is closed.

        Options (``None``: the engine's default): ``response_timeout``
        (seconds an agent may take to answer, 30), ``max_in_flight`` (RPCs
        outstanding at once in a session, 1: strictly one after another),
        ``max_rpcs_per_session`` (255, when the agent does not say),
        ``max_queue`` (RPCs queued per agent, 10 000; more fail with
        :class:`SessionError`), ``max_agents`` (agents tracked, 10 000),
        ``link_queue`` (frames waiting to be written, 8192).
        """
        native = self._native.session_manager(
            response_timeout, max_in_flight, max_rpcs_per_session, max_queue, max_agents, link_queue
        )
        return SessionManager(native)

    def session_agent(
        self,
        manager_id: str,
        handler: RpcHandler,
        *,
        device_id: Optional[str] = None,
        parameters: Optional[Dict[str, str]] = None,
        response_timeout: Optional[float] = None,
        retry_min_wait: Optional[float] = None,
        retry_multiplier: Optional[float] = None,
        max_rpcs_per_session: Optional[int] = None,
        max_queue: Optional[int] = None,
        max_requests: Optional[int] = None,
        max_events: Optional[int] = None,
        task_timeout: Optional[float] = None,
        reconnect_min: Optional[float] = None,
        reconnect_max: Optional[float] = None,
        journal: Optional[Union[str, "os.PathLike[str]"]] = None,
        boot_event: bool = True,
    ) -> SessionAgent:
        """Runs the session engine's agent, reporting to ``manager_id``.

        ``handler(method, payload)`` answers the manager's RPCs one at a time,
        in order, with bytes or str; an exception answers with a fault (its
        ``fault_code`` attribute, e.g. from :class:`Fault`, or 8002). Call it
        from a running event loop: handlers run there. ``device_id``
        (default: the client id) and ``parameters`` are reported in every
        ``Inform``; ``response_timeout`` (seconds, default 30) is how long
        the agent waits for the manager before the session fails.

        After a failed session the agent retries after a random wait in
        ``[m·k^(n-1), m·k^n]`` for retry ``n``, with ``m = retry_min_wait``
        (seconds, default 5) and ``k = retry_multiplier`` (default 2.0).
        Limits: ``max_rpcs_per_session`` (255), ``max_queue`` (RPCs queued,
        1024; more are answered with fault 8004 without running),
        ``max_requests`` (its own requests waiting, 64), ``max_events``
        (distinct pending events, 64).

        The driver: ``task_timeout`` (seconds a handler may run; past it
        the RPC is answered with fault 8002 and the queue goes on; default
        25), ``reconnect_min`` and ``reconnect_max`` (the back-off between
        attempts to reach the hub, 0.05 and 5 s), ``journal`` (a file
        keeping persistent events, such as ``"M ..."`` and
        ``"7 TRANSFER COMPLETE"``, across restarts) and ``boot_event``
        (report ``"1 BOOT"`` at start, opening the first session at once;
        without it a manager learns of the agent at its first event, and
        cannot reach it before).
        Raises :class:`ClientClosed` when the client is closed.
        """
        native = self._native.session_agent(
            manager_id,
            handler,
            device_id,
            parameters,
            response_timeout,
            retry_min_wait,
            retry_multiplier,
            max_rpcs_per_session,
            max_queue,
            max_requests,
            max_events,
            task_timeout,
            reconnect_min,
            reconnect_max,
            journal,
            boot_event,
        )
        return SessionAgent(native)

    async def status(self) -> Dict[str, Any]:
        """The hub's counters: ``clients``, ``subscriptions``, ``pending_requests``,
        ``msgs_in``, ``msgs_out``, ``dropped``, ``kv_keys``, ... (a ``dict``)."""
        return await self._native.status()

    def events(self) -> Events:
        """The client's events from now on (connection changes, drops, ...).

        Raises :class:`ClientClosed` when the client is already closed."""
        return Events(self._native.events())

    async def drain(self, timeout: float = 5.0) -> bool:
        """Ends the client gracefully within ``timeout`` seconds.

        Stops the handlers and new deliveries, lets the streams be read to
        their end, waits until everything sent is acknowledged, then closes.
        Returns whether everything was acknowledged and taken in time.
        """
        return await self._native.drain(timeout)

    async def close(self) -> None:
        """Stops the handlers and closes the connection.

        Requests queued but not started get an error reply; running
        handlers finish and reply first.
        """
        await self._native.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class Connecting:
    """What :func:`connect` returns: awaitable, or an async context manager."""

    def __init__(self, client_id: str, **options: Any) -> None:
        self._id = client_id
        self._options = options
        self._client: Optional[Client] = None

    async def _connect(self) -> Client:
        o = self._options
        native = await _native.connect(
            self._id,
            o["addr"],
            o["token"],
            o["service"],
            o["request_timeout"],
            o["connect_timeout"],
            o["resume_wait"],
            o["stream_capacity"],
        )
        return Client(native)

    def __await__(self) -> Generator[Any, None, Client]:
        return self._connect().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._connect()
        return self._client

    async def __aexit__(self, *exc: Any) -> None:
        if self._client is not None:
            await self._client.close()


_exit_hook = False


def _let_native_threads_leave() -> None:
    """At exit, before the interpreter finalizes: waits (without the GIL) for
    the Rust threads now in Python to leave it, and keeps them out from then
    on. A Rust thread entering a finalizing interpreter is ended by CPython
    with ``pthread_exit``, which aborts the process (see ``glue.rs``)."""
    _native.exiting()


def connect(
    client_id: str,
    *,
    addr: Optional[str] = None,
    token: Optional[str] = None,
    service: Optional[str] = None,
    request_timeout: Optional[float] = None,
    connect_timeout: Optional[float] = None,
    resume_wait: Optional[float] = None,
    stream_capacity: Optional[int] = None,
) -> Connecting:
    """Connects to a hub as ``client_id``.

    ``await switchboard.connect(...)`` gives a :class:`Client`;
    ``async with switchboard.connect(...) as client`` closes it at the end.
    Without ``addr`` the hub is found by discovery of ``service`` (default
    ``"switchboard"``); ``token`` replaces the per-user secret file.
    Timeouts are in seconds. ``resume_wait`` is how long the client keeps
    looking for its hub (or the standby that replaced it) to resume after
    losing it; ``stream_capacity`` how many items each subscription or inbox
    holds before pushing back on the hub.
    """
    global _exit_hook
    if not _exit_hook:
        atexit.register(_let_native_threads_leave)
        _exit_hook = True
    return Connecting(
        client_id,
        addr=addr,
        token=token,
        service=service,
        request_timeout=request_timeout,
        connect_timeout=connect_timeout,
        resume_wait=resume_wait,
        stream_capacity=stream_capacity,
    )
