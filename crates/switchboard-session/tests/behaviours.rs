//! Deterministic tests of the 13 session behaviours against the sans-IO
//! cores, with a simulated clock.

mod sim;

use std::time::Duration;

use bytes::Bytes;
use sim::{rpc, Dir, Sim};
use switchboard_session::{
    fault, fault_code, AgentConfig, AgentEvent, Event, EventClass, ManagerConfig, ManagerEvent,
    RetryPolicy,
};
use switchboard_wire::proto::{self, session::Body};

fn results_to_manager(sim: &Sim) -> Vec<(String, Option<u32>)> {
    sim.sent(Dir::ToManager)
        .into_iter()
        .filter_map(|b| match b {
            Body::RpcResult(r) => Some((r.id.clone(), None)),
            Body::Fault(f) if !f.id.is_empty() => Some((f.id.clone(), Some(f.code))),
            _ => None,
        })
        .collect()
}

fn run_tasks(sim: &Sim) -> Vec<String> {
    sim.agent_events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::RunTask { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

// 1. Every session begins with Inform; the manager rejects anything else.
#[test]
fn b01_session_begins_with_inform_and_manager_rejects_others() {
    let mut sim = Sim::default_pair();
    sim.up = true;
    sim.manager.connected(sim.now);
    sim.deliver_to_manager(rpc("x1", "TransferComplete", b""), 0);
    sim.deliver_to_manager(Body::Empty(proto::Empty {}), 0);
    let faults: Vec<_> = sim
        .sent(Dir::ToAgent)
        .into_iter()
        .filter_map(|b| match b {
            Body::Fault(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[0].id, "x1");
    assert!(faults.iter().all(|f| f.code == fault_code::REQUEST_DENIED));
    assert!(
        faults[0].message.contains("inform"),
        "{}",
        faults[0].message
    );
    assert!(!sim.manager.in_session());

    // A proper Inform is accepted, carrying events and the retry count.
    sim.agent
        .add_event(sim.now, Event::new(Event::BOOT))
        .unwrap();
    sim.agent.connected(sim.now);
    sim.settle();
    let informs = sim.informs();
    assert_eq!(informs.len(), 1);
    assert_eq!(informs[0].events[0].code, "1 BOOT");
    assert_eq!(informs[0].retry_count, 0);
    assert_eq!(informs[0].device_id, "cpe-1");
    assert!(sim
        .manager_events
        .iter()
        .any(|e| matches!(e, ManagerEvent::SessionStarted { session_id: 1, .. })));
}

// 2. No manager RPC runs on the agent before InformResponse arrives.
#[test]
fn b02_no_rpc_runs_before_inform_response() {
    let mut sim = Sim::default_pair();
    sim.up = true;
    sim.agent.connected(sim.now);
    // Intercept: push an RPC to the agent before the manager answers the Inform.
    // No work yet, so no Inform. A push makes the agent open a session.
    assert!(sim.agent.poll_transmit().is_none());
    sim.agent.handle_message(
        sim.now,
        proto::Session {
            peer: String::new(),
            session_id: 0,
            body: Some(rpc("r1", "Get", b"a")),
        },
    );
    let mut events = Vec::new();
    while let Some(e) = sim.agent.poll_event() {
        events.push(e);
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, AgentEvent::RunTask { .. })),
        "{events:?}"
    );
    // The agent asked for a session instead.
    let out: Vec<_> = std::iter::from_fn(|| sim.agent.poll_transmit()).collect();
    assert!(out.iter().any(|m| matches!(m.body, Some(Body::Inform(_)))));
    // Only after InformResponse (and the agent's Empty) does the task run.
    sim.deliver_to_agent(
        Body::InformResponse(proto::InformResponse { max_envelopes: 1 }),
        sim.agent.session_id(),
    );
    assert_eq!(run_tasks(&sim), vec!["r1".to_string()]);
}

// 3. One at a time, in order, ids unchanged; unknown ids discarded.
#[test]
fn b03_rpcs_run_one_at_a_time_in_order_with_ids() {
    let cfg = ManagerConfig {
        max_in_flight: 8,
        ..ManagerConfig::default()
    };
    let mut sim = Sim::new(AgentConfig::new("cpe-1"), cfg);
    sim.auto_run = false;
    sim.connect();
    let ids: Vec<_> = (0..5)
        .map(|i| {
            sim.manager
                .queue_rpc(sim.now, "Get", Bytes::from(vec![i as u8]))
                .unwrap()
        })
        .collect();
    sim.settle();
    for _ in 0..5 {
        // Exactly one task runs at a time.
        assert_eq!(sim.running.len(), 1);
        sim.finish(Ok(Bytes::from_static(b"ok")));
    }
    let wire_ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let got: Vec<String> = results_to_manager(&sim)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got, wire_ids);
    let done: Vec<u64> = sim.completed().into_iter().map(|(id, _)| id).collect();
    assert_eq!(done, ids.iter().map(|i| i.0).collect::<Vec<_>>());

    // A result with an unknown id is discarded and reported.
    let before = sim.completed().len();
    let rid = sim.manager.queue_rpc(sim.now, "Get", Bytes::new()).unwrap();
    sim.settle();
    assert_eq!(sim.running.len(), 1);
    let sid = sim.agent.session_id();
    sim.deliver_to_manager(
        Body::RpcResult(proto::RpcResult {
            id: "999".into(),
            method: "Get".into(),
            payload: Bytes::new(),
        }),
        sid,
    );
    assert!(sim
        .manager_events
        .iter()
        .any(|e| matches!(e, ManagerEvent::UnknownResultDiscarded { id } if id == "999")));
    assert_eq!(
        sim.completed().len(),
        before,
        "an unknown result completed something"
    );
    sim.finish(Ok(Bytes::new()));
    assert_eq!(sim.completed().last().unwrap().0, rid.0);
    // The agent too discards answers it is not waiting for.
    sim.deliver_to_agent(
        Body::RpcResult(proto::RpcResult {
            id: "a77".into(),
            ..Default::default()
        }),
        sid,
    );
    assert!(sim
        .agent_events
        .iter()
        .any(|e| matches!(e, AgentEvent::UnknownResultDiscarded { id } if id == "a77")));
}

// 4. A push during a session waits for its turn; after the manager's Empty
// it waits for the next session.
#[test]
fn b04_push_mid_session_is_queued_in_order() {
    let mut sim = Sim::default_pair();
    sim.auto_run = false;
    sim.connect();
    sim.manager.queue_rpc(sim.now, "A", Bytes::new()).unwrap();
    sim.settle();
    assert_eq!(sim.running.len(), 1);
    let sid = sim.agent.session_id();
    // Foreign push while A runs.
    sim.deliver_to_agent(rpc("push-b", "B", b""), sid);
    assert_eq!(sim.running.len(), 1, "B must not run while A runs");
    sim.finish(Ok(Bytes::new()));
    assert_eq!(run_tasks(&sim), vec!["1".to_string(), "push-b".to_string()]);
    sim.finish(Ok(Bytes::new()));
    let got: Vec<_> = results_to_manager(&sim)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got, vec!["1".to_string(), "push-b".to_string()]);

    // Session over (manager sent Empty). A push now opens the next session
    // and runs only after its InformResponse.
    assert!(!sim.agent.in_session());
    sim.deliver_to_agent(rpc("late", "C", b""), sid);
    let starts = sim
        .agent_events
        .iter()
        .filter(|e| matches!(e, AgentEvent::SessionStarted { .. }))
        .count();
    assert_eq!(starts, 2);
    assert_eq!(run_tasks(&sim).last().unwrap(), "late");
}

// 5. Connection requests are answered at once; several give one session.
#[test]
fn b05_connection_requests_acked_and_coalesced() {
    let mut sim = Sim::default_pair();
    sim.up = true;
    sim.manager.connected(sim.now);
    // Agent not yet "connected" from its own view: hold sessions back by
    // delivering the requests while it is disconnected-idle is not possible,
    // so deliver three in a row before letting messages flow.
    for nonce in 1..=3 {
        sim.agent.handle_message(
            sim.now,
            proto::Session {
                peer: String::new(),
                session_id: 0,
                body: Some(Body::ConnectionRequest(proto::ConnectionRequest { nonce })),
            },
        );
    }
    let acks: Vec<_> = std::iter::from_fn(|| sim.agent.poll_transmit())
        .filter_map(|m| match m.body {
            Some(Body::ConnectionRequestAck(a)) => Some(a.nonce),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![1, 2, 3], "each request is acked at once");
    sim.agent.connected(sim.now);
    sim.settle();
    let informs = sim.informs();
    assert_eq!(informs.len(), 1);
    assert_eq!(
        informs[0]
            .events
            .iter()
            .filter(|e| e.code == Event::CONNECTION_REQUEST)
            .count(),
        1
    );

    // Several during a session: exactly one follow-up session.
    let mut sim = Sim::default_pair();
    sim.auto_run = false;
    sim.connect();
    sim.manager.queue_rpc(sim.now, "A", Bytes::new()).unwrap();
    sim.settle();
    assert_eq!(sim.count_informs(), 1);
    let sid = sim.agent.session_id();
    for nonce in 10..13 {
        sim.deliver_to_agent(
            Body::ConnectionRequest(proto::ConnectionRequest { nonce }),
            sid,
        );
    }
    assert_eq!(sim.count_informs(), 1, "no session while one is open");
    sim.finish(Ok(Bytes::new()));
    assert_eq!(sim.count_informs(), 2);
    let follow = &sim.informs()[1];
    assert_eq!(follow.events.len(), 1);
    assert_eq!(follow.events[0].code, Event::CONNECTION_REQUEST);
    sim.settle();
    assert_eq!(sim.count_informs(), 2, "exactly one follow-up session");
    assert!(!sim.agent.in_session());
}

// 6. Agent requests only before its Empty and only when not held.
#[test]
fn b06_agent_requests_before_empty_unless_held() {
    let mut sim = Sim::default_pair();
    sim.connect();
    let id = sim
        .agent
        .queue_request(sim.now, "TransferComplete", Bytes::from_static(b"k1"))
        .unwrap();
    sim.settle();
    // The manager surfaces the request; answer it.
    let req = sim.manager_events.iter().find_map(|e| match e {
        ManagerEvent::AgentRequest { id, method, .. } => Some((id.clone(), method.clone())),
        _ => None,
    });
    assert_eq!(req, Some((id.clone(), "TransferComplete".to_string())));
    assert!(sim.manager.respond(sim.now, &id, Ok(Bytes::new())));
    sim.settle();
    let to_mgr: Vec<_> = sim.sent(Dir::ToManager);
    let rpc_pos = to_mgr
        .iter()
        .position(|b| matches!(b, Body::Rpc(_)))
        .unwrap();
    let empty_pos = to_mgr
        .iter()
        .position(|b| matches!(b, Body::Empty(_)))
        .unwrap();
    assert!(rpc_pos < empty_pos);
    assert!(sim
        .agent_events
        .iter()
        .any(|e| matches!(e, AgentEvent::RequestCompleted { id: i, result: Ok(_) } if *i == id)));
    assert!(!sim.agent.in_session());

    // Held: the manager pushes with hold_requests before the agent's Empty.
    let mut sim = Sim::default_pair();
    sim.up = true;
    sim.agent
        .queue_request(sim.now, "TransferComplete", Bytes::new())
        .unwrap();
    sim.agent
        .queue_request(sim.now, "Kicked", Bytes::new())
        .unwrap();
    sim.agent.connected(sim.now);
    let _inform = sim.agent.poll_transmit().unwrap();
    let sid = sim.agent.session_id();
    sim.agent.handle_message(
        sim.now,
        proto::Session {
            peer: String::new(),
            session_id: sid,
            body: Some(Body::Rpc(proto::Rpc {
                id: "h1".into(),
                method: "Reboot".into(),
                payload: Bytes::new(),
                hold_requests: true,
            })),
        },
    );
    sim.agent.handle_message(
        sim.now,
        proto::Session {
            peer: String::new(),
            session_id: sid,
            body: Some(Body::InformResponse(proto::InformResponse {
                max_envelopes: 1,
            })),
        },
    );
    let out: Vec<_> = std::iter::from_fn(|| sim.agent.poll_transmit())
        .filter_map(|m| m.body)
        .collect();
    assert!(
        !out.iter().any(|b| matches!(b, Body::Rpc(_))),
        "held requests were sent: {out:?}"
    );
    assert!(matches!(out[0], Body::Empty(_)));
    // After Empty the agent only answers.
    let run = std::iter::from_fn(|| sim.agent.poll_event()).find_map(|e| match e {
        AgentEvent::RunTask { task, .. } => Some(task),
        _ => None,
    });
    sim.agent.task_done(sim.now, run.unwrap(), Ok(Bytes::new()));
    let out: Vec<_> = std::iter::from_fn(|| sim.agent.poll_transmit())
        .filter_map(|m| m.body)
        .collect();
    assert!(
        out.iter()
            .all(|b| matches!(b, Body::RpcResult(_) | Body::Fault(_))),
        "{out:?}"
    );
}

// 7. The session ends only when both sides are done and every answer is sent.
#[test]
fn b07_session_ends_when_both_done_and_answers_sent() {
    let mut sim = Sim::default_pair();
    sim.auto_run = false;
    sim.connect();
    sim.manager.queue_rpc(sim.now, "A", Bytes::new()).unwrap();
    sim.settle();
    let sid = sim.agent.session_id();
    // A (misbehaving) manager says Empty while A still runs.
    sim.deliver_to_agent(Body::Empty(proto::Empty {}), sid);
    assert!(sim.agent.in_session(), "ended with an answer unsent");
    sim.finish(Ok(Bytes::new()));
    assert!(!sim.agent.in_session());
    let ended = sim
        .agent_events
        .iter()
        .position(|e| matches!(e, AgentEvent::SessionEnded { .. }))
        .unwrap();
    let last_result = sim
        .wire
        .iter()
        .rposition(|(d, m)| *d == Dir::ToManager && matches!(m.body, Some(Body::RpcResult(_))))
        .unwrap();
    assert!(last_result > 0 && ended > 0);
    // The next session may start now.
    sim.agent
        .add_event(sim.now, Event::new(Event::VALUE_CHANGE))
        .unwrap();
    sim.settle();
    assert_eq!(sim.count_informs(), 2);
}

// 8. Faults pass through with their code and message; the queue continues.
#[test]
fn b08_fault_results_keep_the_queue_going() {
    let cfg = ManagerConfig {
        max_in_flight: 3,
        ..ManagerConfig::default()
    };
    let mut sim = Sim::new(AgentConfig::new("cpe-1"), cfg);
    sim.auto_run = false;
    sim.connect();
    for m in ["Nope", "Bad", "Good"] {
        sim.manager.queue_rpc(sim.now, m, Bytes::new()).unwrap();
    }
    sim.settle();
    sim.finish(Err(fault(
        "",
        fault_code::METHOD_NOT_SUPPORTED,
        "method not supported: Nope",
    )));
    sim.finish(Err(fault("", 9001, "disk full")));
    sim.finish(Ok(Bytes::from_static(b"fine")));
    let done = sim.completed();
    assert_eq!(done.len(), 3);
    assert!(done[0].1.as_ref().unwrap_err().contains("8000"));
    assert!(done[1].1.as_ref().unwrap_err().contains("9001: disk full"));
    assert_eq!(done[2].1.as_ref().unwrap(), &Bytes::from_static(b"fine"));
    let codes: Vec<_> = results_to_manager(&sim);
    assert_eq!(
        codes,
        vec![
            ("1".into(), Some(8000)),
            ("2".into(), Some(9001)),
            ("3".into(), None)
        ]
    );
}

// 9. Response timeout fails the session; retries follow the table.
#[test]
fn b09_timeout_and_retry_table() {
    let mut sim = Sim::default_pair();
    sim.agent
        .add_event(sim.now, Event::new(Event::BOOT))
        .unwrap();
    // The agent's messages go nowhere: the manager is silent.
    sim.agent.connected(sim.now);
    while sim.agent.poll_transmit().is_some() {}
    let policy = RetryPolicy::default();
    let mut failures = Vec::new();
    for _ in 0..12 {
        let next = sim.agent.poll_timeout().unwrap();
        sim.now = next;
        sim.agent.handle_timeout(sim.now);
        while sim.agent.poll_transmit().is_some() {}
        while let Some(e) = sim.agent.poll_event() {
            if let AgentEvent::SessionFailed {
                retry,
                wait,
                reason,
                ..
            } = e
            {
                assert_eq!(reason, switchboard_session::FailReason::ResponseTimeout);
                failures.push((retry, wait));
            }
        }
    }
    assert!(failures.len() >= 5, "{failures:?}");
    for (n, wait) in &failures {
        let (lo, hi) = policy.range(*n);
        assert!(
            *wait >= lo && *wait <= hi,
            "retry {n}: {wait:?} not in [{lo:?}, {hi:?}]"
        );
    }
    assert_eq!(
        policy.range(1),
        (Duration::from_secs(5), Duration::from_secs(10))
    );
    assert_eq!(
        policy.range(3),
        (Duration::from_secs(20), Duration::from_secs(40))
    );
    assert_eq!(
        policy.range(10),
        policy.range(25),
        "range fixed from retry 10 on"
    );
    // m and k are configurable.
    let p = RetryPolicy {
        min_wait: Duration::from_secs(1),
        multiplier: 3000,
    };
    assert_eq!(p.range(2), (Duration::from_secs(3), Duration::from_secs(9)));

    // The retry count resets after a successful session, and a new event
    // during the wait starts the session at once.
    let mut sim = Sim::default_pair();
    sim.agent
        .add_event(sim.now, Event::new(Event::BOOT))
        .unwrap();
    sim.up = true;
    sim.agent.connected(sim.now);
    sim.manager.connected(sim.now);
    // Lose the first Inform: the manager never sees it.
    while sim.agent.poll_transmit().is_some() {}
    sim.advance(Duration::from_secs(31));
    assert_eq!(sim.failures().len(), 1);
    assert_eq!(sim.agent.retry_count(), 1);
    let informs_before = sim.count_informs();
    sim.agent
        .add_event(sim.now, Event::new(Event::VALUE_CHANGE))
        .unwrap();
    sim.settle();
    assert_eq!(
        sim.count_informs(),
        informs_before + 1,
        "new event did not start a session at once"
    );
    let last = sim.informs().pop().unwrap();
    assert_eq!(last.retry_count, 1);
    assert!(!sim.agent.in_session());
    assert_eq!(
        sim.agent.retry_count(),
        0,
        "retry count resets after success"
    );

    // Manager side: an RPC without an answer times out and fails the session.
    let mut sim = Sim::default_pair();
    sim.auto_run = false;
    sim.connect();
    sim.manager
        .queue_rpc(sim.now, "Slow", Bytes::new())
        .unwrap();
    sim.settle();
    sim.advance(Duration::from_secs(29));
    assert!(sim.completed().is_empty());
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.completed().len(), 1);
    assert!(sim.completed()[0]
        .1
        .as_ref()
        .unwrap_err()
        .contains("timeout"));
    assert!(sim.manager_events.iter().any(|e| matches!(
        e,
        ManagerEvent::SessionFailed {
            reason: switchboard_session::FailReason::ResponseTimeout,
            ..
        }
    )));
    // The agent was told, and its session failed too.
    assert!(!sim.failures().is_empty());
}

// 10. Events survive failures by class; cleared only when delivered.
#[test]
fn b10_event_classes_and_journal() {
    assert_eq!(EventClass::of("0 BOOTSTRAP"), EventClass::Persistent);
    assert_eq!(EventClass::of("M Download"), EventClass::Persistent);
    assert_eq!(
        EventClass::of("7 TRANSFER COMPLETE"),
        EventClass::Persistent
    );
    assert_eq!(EventClass::of("1 BOOT"), EventClass::UntilRestart);
    assert_eq!(EventClass::of("4 VALUE CHANGE"), EventClass::UntilRestart);
    assert_eq!(
        EventClass::of("6 CONNECTION REQUEST"),
        EventClass::DropOnFailure
    );

    let mut sim = Sim::default_pair();
    sim.up = true;
    sim.manager.connected(sim.now);
    for code in [Event::BOOTSTRAP, Event::BOOT, Event::VALUE_CHANGE] {
        sim.agent.add_event(sim.now, Event::new(code)).unwrap();
    }
    sim.agent
        .add_event(sim.now, Event::with_key("M Download", "cmd-7"))
        .unwrap();
    sim.agent.handle_message(
        sim.now,
        proto::Session {
            peer: String::new(),
            session_id: 0,
            body: Some(Body::ConnectionRequest(proto::ConnectionRequest {
                nonce: 1,
            })),
        },
    );
    sim.agent.connected(sim.now);
    // The session fails before InformResponse: the connection drops.
    while sim.agent.poll_transmit().is_some() {}
    sim.agent.disconnected(sim.now);
    sim.settle();
    let mut pending: Vec<String> = sim
        .agent
        .pending_events()
        .into_iter()
        .map(|e| e.code)
        .collect();
    pending.sort();
    assert_eq!(
        pending,
        vec!["0 BOOTSTRAP", "1 BOOT", "4 VALUE CHANGE", "M Download"]
    );
    let journal: Vec<_> = sim.agent.journal();
    assert_eq!(
        journal,
        vec![
            Event::new(Event::BOOTSTRAP),
            Event::with_key("M Download", "cmd-7")
        ]
    );

    // "Restart": a fresh agent restored from the journal keeps only those.
    let mut restarted = switchboard_session::Agent::new(AgentConfig::new("cpe-1"), 1);
    restarted.restore(journal.clone());
    assert_eq!(restarted.pending_events(), journal);

    // Delivered (InformResponse) → cleared, and the journal shrinks.
    sim.advance(Duration::from_secs(11));
    sim.up = true;
    sim.agent.connected(sim.now);
    sim.manager.connected(sim.now);
    sim.settle();
    assert!(sim.agent.pending_events().is_empty());
    assert!(sim.agent.journal().is_empty());
    assert!(sim
        .agent_events
        .iter()
        .any(|e| matches!(e, AgentEvent::JournalChanged)));
}

// 11. A duplicate id is ignored while the original is queued or running.
#[test]
fn b11_duplicate_ids_ignored_while_pending() {
    let mut sim = Sim::default_pair();
    sim.auto_run = false;
    sim.connect();
    sim.manager.queue_rpc(sim.now, "A", Bytes::new()).unwrap();
    sim.settle();
    let sid = sim.agent.session_id();
    sim.deliver_to_agent(rpc("1", "A", b"again"), sid); // same id as the running one
    sim.deliver_to_agent(rpc("q", "Q", b""), sid);
    sim.deliver_to_agent(rpc("q", "Q", b"again"), sid); // same id as a queued one
    let dups = sim
        .agent_events
        .iter()
        .filter(|e| matches!(e, AgentEvent::DuplicateIgnored { .. }))
        .count();
    assert_eq!(dups, 2);
    assert_eq!(sim.agent.queued_tasks(), 2);
    sim.finish(Ok(Bytes::new()));
    sim.finish(Ok(Bytes::new()));
    let ids: Vec<_> = results_to_manager(&sim)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(ids, vec!["1", "q"]);
}

// 12. Limits: queue length and RPCs per session.
#[test]
fn b12_limits_give_faults_not_hangs() {
    let mut acfg = AgentConfig::new("cpe-1");
    acfg.max_queue = 3;
    acfg.max_rpcs_per_session = 100;
    let mut sim = Sim::new(acfg, ManagerConfig::default());
    sim.auto_run = false;
    sim.connect();
    sim.manager.queue_rpc(sim.now, "A", Bytes::new()).unwrap();
    sim.settle();
    let sid = sim.agent.session_id();
    for i in 0..4 {
        sim.deliver_to_agent(rpc(&format!("p{i}"), "P", b""), sid);
    }
    // Queue holds 3 (the running one + 2); the other 2 pushes were refused.
    assert_eq!(sim.agent.queued_tasks(), 3);
    let rejected: Vec<_> = sim
        .agent_events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::PushRejected { fault } => Some(fault.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0].code, fault_code::RESOURCES_EXCEEDED);
    assert!(rejected[0].message.contains("queue full"));

    // RPCs per session: the agent announces its cap and the manager keeps to
    // it, opening a further session for the rest.
    let mut acfg = AgentConfig::new("cpe-1");
    acfg.max_rpcs_per_session = 2;
    let mut sim = Sim::new(acfg, ManagerConfig::default());
    sim.connect();
    for _ in 0..5 {
        sim.manager.queue_rpc(sim.now, "Get", Bytes::new()).unwrap();
    }
    sim.settle();
    assert_eq!(sim.completed().len(), 5);
    assert_eq!(sim.count_informs(), 3);
    for i in sim.informs() {
        assert_eq!(i.max_rpcs, 2);
    }
    // A manager that ignores the cap gets fault 8004 in order.
    let mut acfg = AgentConfig::new("cpe-1");
    acfg.max_rpcs_per_session = 1;
    let mut sim = Sim::new(acfg, ManagerConfig::default());
    sim.auto_run = false;
    sim.connect();
    sim.manager.queue_rpc(sim.now, "A", Bytes::new()).unwrap();
    sim.settle();
    let sid = sim.agent.session_id();
    sim.deliver_to_agent(rpc("over", "B", b""), sid);
    sim.finish(Ok(Bytes::new()));
    let res = results_to_manager(&sim);
    assert_eq!(
        res,
        vec![
            ("1".into(), None),
            ("over".into(), Some(fault_code::RESOURCES_EXCEEDED))
        ]
    );

    // The manager's own queue is bounded with a clear error.
    let mcfg = ManagerConfig {
        max_queue: 2,
        ..ManagerConfig::default()
    };
    let mut m = switchboard_session::Manager::new(mcfg);
    let now = sim.now;
    m.queue_rpc(now, "a", Bytes::new()).unwrap();
    m.queue_rpc(now, "b", Bytes::new()).unwrap();
    let err = m.queue_rpc(now, "c", Bytes::new()).unwrap_err();
    assert_eq!(err.limit, 2);
    assert!(err.to_string().contains("queue full"));
}

// 13. Connection lost mid-session: failed, retried per the table, nothing lost.
#[test]
fn b13_connection_lost_mid_session_loses_nothing() {
    let cfg = ManagerConfig {
        max_in_flight: 4,
        ..ManagerConfig::default()
    };
    let mut sim = Sim::new(AgentConfig::new("cpe-1"), cfg);
    sim.auto_run = false;
    sim.connect();
    let ids: Vec<_> = (0..6)
        .map(|_| sim.manager.queue_rpc(sim.now, "Get", Bytes::new()).unwrap())
        .collect();
    sim.settle();
    assert_eq!(sim.running.len(), 1);
    sim.disconnect();
    assert!(!sim.agent.in_session() && !sim.manager.in_session());
    let fails = sim.failures();
    assert_eq!(fails.len(), 1);
    let (lo, hi) = RetryPolicy::default().range(1);
    assert!(fails[0].1 >= lo && fails[0].1 <= hi);
    // The running task finishes while disconnected; its result is held.
    sim.finish(Ok(Bytes::from_static(b"held")));
    // Reconnect at once: no session before the retry wait is over.
    sim.connect();
    assert_eq!(sim.count_informs(), 1);
    sim.auto_run = true;
    sim.advance(hi);
    assert_eq!(sim.count_informs(), 2);
    assert_eq!(sim.informs()[1].retry_count, 1);
    let done: Vec<u64> = sim
        .completed()
        .into_iter()
        .map(|(id, r)| {
            assert!(r.is_ok());
            id
        })
        .collect();
    assert_eq!(
        done,
        ids.iter().map(|i| i.0).collect::<Vec<_>>(),
        "every rpc answered once, in order"
    );
    assert_eq!(sim.agent.retry_count(), 0);
}
