//! Remote mailboxes between two nodes on 127.0.0.1: batches, barriers and end-of-input cross
//! the link typed and in order, and credits are per channel — a subtask that holds on to its
//! messages stalls its own channel, not the link.

use actix::prelude::*;
use riffle::cluster::{Node, Status};
use riffle::internals::actors::{Credit, DataMessage};
use riffle::internals::cluster::{EdgeAddress, Inbox};
use riffle::internals::framework::BatchCodec;
use riffle::internals::framework::{ChannelEvent, RecordBatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

const JOB: u64 = 42;
const SECRET: &[u8] = b"remote mailbox test";

fn node(name: &str, seeds: &[String]) -> Node {
    Node::builder()
        .name(name)
        .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
        .seeds(seeds.iter().cloned())
        .heartbeat(Duration::from_millis(20))
        .start()
        .expect("node")
}

/// Records what arrives and drops each message (its credit returns).
struct Collector {
    seen: Vec<String>,
    done: Arc<Notify>,
    expect: usize,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<DataMessage> for Collector {
    type Result = ();
    fn handle(&mut self, msg: DataMessage, _ctx: &mut Context<Self>) {
        self.seen.push(match msg.event {
            ChannelEvent::Batch(RecordBatch { payload, .. }) => {
                match payload.downcast::<Vec<u64>>() {
                    Ok(v) => format!("batch {:?}", v.first()),
                    Err(_) => "wrong type".to_string(),
                }
            }
            ChannelEvent::Barrier(n) => format!("barrier {n}"),
            ChannelEvent::EndOfInput => "end".to_string(),
            ChannelEvent::Watermark(t) => format!("watermark {t}"),
            ChannelEvent::Idle => "idle".to_string(),
        });
        if self.seen.len() == self.expect {
            self.done.notify_one();
        }
    }
}

struct Seen;
impl Message for Seen {
    type Result = Vec<String>;
}
impl Handler<Seen> for Collector {
    type Result = MessageResult<Seen>;
    fn handle(&mut self, _: Seen, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.seen.clone())
    }
}

/// Keeps every message (and so its credit) until released.
#[derive(Default)]
struct Holder {
    held: Vec<DataMessage>,
}
impl Actor for Holder {
    type Context = Context<Self>;
}
impl Handler<DataMessage> for Holder {
    type Result = ();
    fn handle(&mut self, msg: DataMessage, _ctx: &mut Context<Self>) {
        self.held.push(msg);
    }
}
struct Release;
impl Message for Release {
    type Result = usize;
}
impl Handler<Release> for Holder {
    type Result = usize;
    fn handle(&mut self, _: Release, _ctx: &mut Context<Self>) -> usize {
        let n = self.held.len();
        self.held.clear();
        n
    }
}

fn batch(i: u64, credit: tokio::sync::OwnedSemaphorePermit) -> DataMessage {
    DataMessage {
        epoch: 3,
        channel: 0,
        event: ChannelEvent::Batch(RecordBatch::new(Box::new(vec![i; 16]), 16)),
        credit: Some(Credit::Local(credit)),
    }
}

#[test]
fn remote_mailboxes_carry_events_with_per_channel_credits() {
    let n1 = node("n1", &[]);
    let n2 = node("n2", &[n1.local_addr().to_string()]);
    let m = n1.wait_members(Duration::from_secs(10), |m| {
        m.iter().any(|x| x.node == "n2" && x.status == Status::Up)
    });
    assert!(!m.is_empty(), "nodes linked");

    let system = actix_rt::System::new();
    system.block_on(async {
        let codec = BatchCodec::of::<u64>();
        let done = Arc::new(Notify::new());
        let fast = Collector {
            seen: Vec::new(),
            done: done.clone(),
            expect: 54,
        }
        .start();
        let slow = Holder::default().start();
        n2.register_inbox(
            JOB,
            1,
            0,
            Inbox {
                to: slow.clone().recipient(),
                codec: codec.clone(),
                channels: 1,
                bytes_in: None,
                credit_batch: 1,
                pending: Default::default(),
            },
        );
        n2.register_inbox(
            JOB,
            1,
            1,
            Inbox {
                to: fast.clone().recipient(),
                codec: codec.clone(),
                channels: 1,
                bytes_in: None,
                credit_batch: 1,
                pending: Default::default(),
            },
        );
        let edge = |to: u32| EdgeAddress {
            job: JOB,
            epoch: 3,
            chain: 1,
            from: 0,
            to,
            channel: 0,
        };
        let to_slow = n1
            .remote_mailbox(edge(0), "n2", codec.clone())
            .expect("mailbox");
        let to_fast = n1
            .remote_mailbox(edge(1), "n2", codec.clone())
            .expect("mailbox");
        let (slow_credits, fast_credits) =
            (Arc::new(Semaphore::new(4)), Arc::new(Semaphore::new(4)));

        // The slow channel uses up its 4 credits and stalls: its receiver holds every message.
        for i in 0..4 {
            let p = slow_credits.clone().acquire_owned().await.expect("credit");
            to_slow.try_send(batch(i, p)).expect("send");
        }
        // The fast channel on the same link goes on: 50 batches, a barrier, end of input.
        for i in 0..50 {
            let p = fast_credits.clone().acquire_owned().await.expect("credit");
            to_fast.try_send(batch(i, p)).expect("send");
        }
        for event in [
            ChannelEvent::Watermark(41),
            ChannelEvent::Idle,
            ChannelEvent::Barrier(7),
            ChannelEvent::EndOfInput,
        ] {
            let p = fast_credits.clone().acquire_owned().await.expect("credit");
            let msg = DataMessage {
                epoch: 3,
                channel: 0,
                event,
                credit: Some(Credit::Local(p)),
            };
            to_fast.try_send(msg).expect("send");
        }
        done.notified().await;
        let seen = fast.send(Seen).await.expect("seen");
        let mut expect: Vec<String> = (0..50)
            .map(|i| format!("batch {:?}", Some(i as u64)))
            .collect();
        expect.push("watermark 41".into());
        expect.push("idle".into());
        expect.push("barrier 7".into());
        expect.push("end".into());
        assert_eq!(seen, expect, "typed and in order");
        // Every fast credit came back over the wire; the slow channel is still stalled.
        let all = fast_credits
            .clone()
            .acquire_many_owned(4)
            .await
            .expect("fast credits back");
        drop(all);
        assert!(
            slow_credits.clone().try_acquire_owned().is_err(),
            "the slow channel has no credit"
        );
        // Releasing the slow receiver returns its credits too.
        assert_eq!(slow.send(Release).await.expect("release"), 4);
        let back = slow_credits
            .clone()
            .acquire_many_owned(4)
            .await
            .expect("slow credits back");
        drop(back);
    });
}
