//! The client side of the handshake and keepalive against scripted peers:
//! an impostor that cannot prove the secret, a hub that goes silent, and a
//! real hub that expects pings.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchboard::discovery::{hub_proof, nonce, Secret};
use switchboard::wire::{proto, Frame, FrameCodec, Kind};
use switchboard::{Client, ClientError, ConnectionState, Hub};
use switchboard_tests::{within, TOKEN};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// How the scripted peer behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Proves itself with the wrong secret.
    Impostor,
    /// Proves itself, welcomes the client, then says nothing more.
    Silent,
    /// Proves itself, then refuses the client's proof.
    Reject,
}

/// A peer that answers the handshake as `mode` says.
async fn scripted_hub(mode: Mode) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, FrameCodec::new());
                let Some(Ok(Frame {
                    kind: Some(Kind::Hello(hello)),
                    ..
                })) = framed.next().await
                else {
                    return;
                };
                let identity = proto::HubIdentity {
                    service: "switchboard".into(),
                    port: u32::from(addr.port()),
                    ..Default::default()
                };
                let secret = Secret::from_token(if mode == Mode::Impostor {
                    "not the token"
                } else {
                    TOKEN
                });
                let hub_nonce = nonce();
                let proof = hub_proof(&secret, &hello.client_nonce, &hub_nonce, &identity);
                let challenge = proto::Challenge {
                    identity: Some(identity.clone()),
                    hub_nonce: hub_nonce.to_vec().into(),
                    proof: proof.to_vec().into(),
                };
                if framed.send(Frame::from(challenge)).await.is_err() {
                    return;
                }
                // Record whether the client sent its proof at all.
                if let Some(Ok(Frame {
                    kind: Some(Kind::Auth(_)),
                    ..
                })) = framed.next().await
                {
                    if mode == Mode::Reject {
                        let refusal = Frame::error(
                            0,
                            switchboard::wire::ErrorCode::AuthFailed,
                            "wrong proof",
                        );
                        let _ = framed.send(refusal).await;
                        return;
                    }
                    let welcome = proto::Welcome {
                        client_id: hello.client_id,
                        identity: Some(identity),
                        ..Default::default()
                    };
                    let _ = framed.send(Frame::from(welcome)).await;
                    // Silent from here on, but keep the connection open.
                    while framed.next().await.is_some() {}
                }
            });
        }
    });
    Ok(addr.to_string())
}

#[tokio::test]
async fn an_impostor_hub_is_refused() -> anyhow::Result<()> {
    let addr = scripted_hub(Mode::Impostor).await?;
    match within(Client::builder("c").addr(&addr).token(TOKEN).connect()).await? {
        Err(ClientError::HubUnverified { addr: a }) => assert_eq!(a, addr),
        other => panic!("expected HubUnverified, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_refused_proof_is_an_auth_error() -> anyhow::Result<()> {
    let addr = scripted_hub(Mode::Reject).await?;
    match within(Client::builder("c").addr(&addr).token(TOKEN).connect()).await? {
        Err(ClientError::AuthFailed(msg)) => assert!(msg.contains("wrong proof"), "{msg}"),
        other => panic!("expected AuthFailed, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_silent_hub_is_detected_by_keepalive() -> anyhow::Result<()> {
    let addr = scripted_hub(Mode::Silent).await?;
    let client = Client::builder("c")
        .addr(&addr)
        .token(TOKEN)
        .keepalive(Duration::from_millis(50))
        .connect()
        .await?;
    let mut state = client.state();
    within(state.wait_for(|s| matches!(s, ConnectionState::Reconnecting { reason, .. } if reason.contains("sent nothing")))).await??;
    Ok(())
}

#[tokio::test]
async fn clients_ping_a_hub_that_expects_keepalive() -> anyhow::Result<()> {
    let hub = Hub::builder()
        .token(TOKEN)
        .listen("127.0.0.1:0")
        .write_hint(false)
        .keepalive(Duration::from_millis(250))
        .start()
        .await?;
    let client = Client::builder("idle")
        .addr(hub.local_addr().to_string())
        .token(TOKEN)
        .connect()
        .await?;
    // Idle for well over three keepalive intervals: the pings keep the
    // connection, so it is still the first one. (Intervals long enough
    // that a loaded machine's pause of a few hundred ms does not look
    // like silence.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(matches!(
        &*client.state().borrow(),
        ConnectionState::Connected { generation: 1, .. }
    ));
    assert_eq!(hub.status().clients, 1);
    Ok(())
}
