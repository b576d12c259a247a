//! The session engine's two sans-IO state machines fed arbitrary session
//! messages from a hostile peer, mixed with the application's own calls
//! (queueing RPCs and agent requests, finishing tasks), timeouts,
//! disconnects and reconnects.
//!
//! Input layout: a sequence of operations, each a selector byte followed by
//! what it consumes; arbitrary messages are protobuf `Session` bodies.
//! Checks: nothing panics; the manager's queue and in-flight RPCs stay
//! within their limits and every queued RPC completes at most once (and
//! only RPCs that were queued complete); the agent's task queue stays
//! within its limit and it runs one task at a time.

#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchboard_session::{
    Agent, AgentConfig, AgentEvent, Manager, ManagerConfig, ManagerEvent, RpcId, TaskId,
};
use switchboard_wire::proto;

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mconfig = ManagerConfig {
        max_in_flight: 2,
        max_queue: 4,
        max_rpcs_per_session: 3,
        ..ManagerConfig::default()
    };
    let aconfig = AgentConfig {
        max_queue: 3,
        max_requests: 2,
        max_events: 4,
        ..AgentConfig::new("cpe")
    };
    let mut manager = Manager::new(mconfig.clone());
    let mut agent = Agent::new(aconfig.clone(), 1);
    manager.connected(now);
    agent.connected(now);
    let mut queued: HashSet<RpcId> = HashSet::new();
    let mut completed: HashSet<RpcId> = HashSet::new();
    let mut running: Option<TaskId> = None;
    let mut rest = data;
    let mut steps = 0;

    while let [op, tail @ ..] = rest {
        rest = tail;
        steps += 1;
        if steps > 500 {
            break;
        }
        match op % 9 {
            // An arbitrary message to either side.
            0 | 1 => {
                let [len, tail @ ..] = rest else { break };
                let n = usize::from(*len).min(tail.len());
                let (body, tail) = tail.split_at(n);
                rest = tail;
                if let Ok(msg) = proto::Session::decode(body) {
                    if op % 9 == 0 {
                        manager.handle_message(now, msg);
                    } else {
                        agent.handle_message(now, msg);
                    }
                }
            }
            2 => {
                if let Ok(id) = manager.queue_rpc(now, "Get", Bytes::from_static(b"x")) {
                    assert!(queued.insert(id), "rpc id reused");
                }
            }
            3 => {
                let _ = agent.queue_request(now, "Hello", Bytes::new());
            }
            4 => {
                if let Some(task) = running.take() {
                    agent.task_done(now, task, Ok(Bytes::from_static(b"ok")));
                }
            }
            5 => {
                now += Duration::from_millis(u64::from(*op) * 50);
                manager.handle_timeout(now);
                agent.handle_timeout(now);
            }
            6 => {
                if op & 0x80 == 0 {
                    manager.disconnected(now);
                    manager.connected(now);
                } else {
                    agent.disconnected(now);
                    agent.connected(now);
                }
            }
            7 => {
                // The honest link: exchange what both sides have queued.
                for _ in 0..8 {
                    while let Some(m) = agent.poll_transmit() {
                        manager.handle_message(now, m);
                    }
                    while let Some(m) = manager.poll_transmit() {
                        agent.handle_message(now, m);
                    }
                }
            }
            _ => {
                // Drop whatever is queued (a lossy peer).
                while agent.poll_transmit().is_some() {}
                while manager.poll_transmit().is_some() {}
            }
        }
        while let Some(ev) = manager.poll_event() {
            if let ManagerEvent::RpcCompleted { id, .. } = ev {
                assert!(queued.contains(&id), "completion of an rpc never queued");
                assert!(completed.insert(id), "rpc completed twice");
            }
        }
        while let Some(ev) = agent.poll_event() {
            if let AgentEvent::RunTask { task, .. } = ev {
                assert!(running.is_none(), "a task started while another runs");
                running = Some(task);
            }
        }
        assert!(manager.outstanding() <= mconfig.max_in_flight);
        assert!(manager.queued() + manager.outstanding() <= mconfig.max_queue);
        assert!(agent.queued_tasks() <= aconfig.max_queue);
    }
});
