//! Publishes one message and prints its seq.
//!
//!     cargo run -p pushgate-client --example publish -- http://127.0.0.1:8080 device-42 '{"cmd":"reboot"}' [IDEMPOTENCY_KEY]
//!
//! The publisher key, when the gateway has `--publisher-key`, comes from
//! `PUSHGATE_PUBLISHER_KEY`.

use pushgate_client::{Error, Publisher};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gateway, channel, data, rest @ ..] = args.as_slice() else {
        eprintln!("usage: publish GATEWAY CHANNEL DATA [IDEMPOTENCY_KEY]");
        std::process::exit(2);
    };
    let mut publisher = Publisher::new(gateway).expect("a gateway URL");
    if let Ok(key) = std::env::var("PUSHGATE_PUBLISHER_KEY") {
        publisher = publisher.key(key);
    }
    let result = match rest.first() {
        Some(id) => publisher.publish_with_key(channel, data.clone(), id).await,
        None => publisher.publish(channel, data.clone()).await,
    };
    match result {
        Ok(p) => println!(r#"{{"seq":{}}}"#, p.seq),
        Err(Error::Refused(r)) => {
            eprintln!("refused: {r}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
