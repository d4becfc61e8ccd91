//! `beatd send`: one Celery message now, like Celery's `send_task`; prints its task id.

use super::settings::Settings;
use crate::cli::SendArgs;
use crate::clock::{Clock, SystemClock};
use crate::error::{exit, Error};
use crate::protocol::TaskMessage;
use serde_json::Value;

/// `beatd send`: one Celery message now; prints its task id.
///
/// # Errors
/// Bad `--args` / `--kwargs`; Redis or RabbitMQ unreachable.
pub async fn send(settings: &Settings, args: &SendArgs) -> Result<u8, Error> {
    let parsed_args: Value = serde_json::from_str(&args.args)
        .map_err(|e| Error::Usage(format!("--args is not JSON: {e}")))?;
    let Value::Array(task_args) = parsed_args else {
        return Err(Error::Usage("--args must be a JSON array".into()));
    };
    let parsed_kwargs: Value = serde_json::from_str(&args.kwargs)
        .map_err(|e| Error::Usage(format!("--kwargs is not JSON: {e}")))?;
    let Value::Object(kwargs) = parsed_kwargs else {
        return Err(Error::Usage("--kwargs must be a JSON object".into()));
    };
    let now = SystemClock.now();
    let expires = args
        .expires
        .and_then(|d| chrono::Duration::from_std(d.into()).ok())
        .map(|d| now + d);
    let msg = TaskMessage::new(args.task.clone())
        .args(task_args)
        .kwargs(kwargs)
        .queue(args.queue.clone())
        .priority(args.priority)
        .expires(expires)
        .origin(crate::host::origin());
    let encoded = msg.encode(now);
    if let Some(amqp) = &settings.amqp_url {
        // On RabbitMQ: declared and published as Celery does, confirmed.
        let publisher = crate::emit::AmqpPublisher::new(
            amqp.clone(),
            settings.queue_args.clone(),
            std::sync::Arc::default(),
        );
        publisher.publish(&[encoded.payload.as_bytes()]).await?;
        println!("{}", encoded.id);
        return Ok(exit::OK);
    }
    let (conn, _) = super::daemon::connect_once(settings).await?;
    crate::emit::send_one(&conn, &encoded.list_key, encoded.payload.as_bytes()).await?;
    println!("{}", encoded.id);
    Ok(exit::OK)
}
