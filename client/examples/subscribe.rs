//! Prints a channel's messages, one JSON object per line, until the subscription stops.
//!
//!     cargo run -p pushgate-client --example subscribe -- http://127.0.0.1:8080 device-42 [ws|sse|poll|auto] [SINCE]
//!
//! Connection events go to stderr; a gap is printed as the worker's gap frame.

use futures_util::StreamExt;
use pushgate_client::{Event, SubscribeOptions, Subscriber, Transport};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gateway, channel, rest @ ..] = args.as_slice() else {
        eprintln!("usage: subscribe GATEWAY CHANNEL [ws|sse|poll|auto] [SINCE]");
        std::process::exit(2);
    };
    let transport = match rest.first().map(String::as_str) {
        None | Some("auto") => Transport::Auto,
        Some("ws") => Transport::Ws,
        Some("sse") => Transport::Sse,
        Some("poll") => Transport::Poll,
        Some(other) => {
            eprintln!("unknown transport {other:?}");
            std::process::exit(2);
        }
    };
    let since = rest.get(1).map(|s| s.parse().expect("SINCE is a number"));
    let opts = SubscribeOptions::new(gateway, channel)
        .transport(transport)
        .since(Some(since.unwrap_or(0)));
    let mut events = Box::pin(Subscriber::connect(opts).expect("options").into_stream());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Message(m)) => println!(r#"{{"seq":{},"data":{}}}"#, m.seq, m.data),
            Ok(Event::Gap(g)) => println!(
                r#"{{"gap":true,"epoch":{},"first_seq":{}}}"#,
                g.epoch, g.first_seq
            ),
            Ok(Event::Open { transport, worker }) => eprintln!("open: {transport:?} on {worker}"),
            Ok(Event::Reconnecting { reason, delay, .. }) => {
                eprintln!("reconnecting in {delay:?}: {reason}")
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("stopped: {e}");
                std::process::exit(1);
            }
        }
    }
}
