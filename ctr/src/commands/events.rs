//! `ctr events`: subscribe to the daemon's events and print one line each:
//! `<timestamp> <namespace> <topic> <event JSON>`, as stock ctr 1.6 does.

use std::io::{self, Write};

use clap::Args;
use containerd_client::services::v1::SubscribeRequest;

use super::{proto_time, GlobalArgs};
use crate::errdefs;
use crate::eventjson::event_json;
use crate::golog;
use crate::gotime::go_string_utc;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Filters (containerd filter syntax, e.g. `topic~="/namespaces/"`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

pub async fn run(global: &GlobalArgs, args: EventsArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    // The events client returns the subscription's errors unconverted.
    let mut stream = client
        .call(client.events().subscribe(client.request(SubscribeRequest { filters: args.filters })))
        .await
        .map_err(|s| errdefs::raw(&s))?;
    let mut out = io::stdout().lock();
    loop {
        let envelope = match client.recv(&mut stream).await {
            Ok(Some(e)) => e,
            // The server ended the stream: Go's Recv returns io.EOF.
            Ok(None) => anyhow::bail!("EOF"),
            Err(s) => return Err(errdefs::raw(&s)),
        };
        let json = match &envelope.event {
            Some(any) => match event_json(&any.type_url, &any.value) {
                Ok(j) => j,
                Err(e) => {
                    golog::warn("cannot unmarshal an event from Any", &e);
                    continue;
                }
            },
            None => String::new(),
        };
        let ts = proto_time(envelope.timestamp.as_ref().map(|t| (t.seconds, t.nanos)));
        writeln!(out, "{} {} {} {}", go_string_utc(ts), envelope.namespace, envelope.topic, json)?;
        out.flush()?;
    }
}
