//! `POST /conversations/{id}/upload?userId=U`: files become attachments of a
//! user message.
//!
//! The body is either the raw file (its `Content-Type`, and the filename of a
//! `Content-Disposition` header if sent) or `multipart/form-data`, where a
//! part typed `application/vnd.microsoft.activity` (or named `activity`)
//! carries the activity and every other part is a file. Files are stored
//! and linked by `contentUrl` as
//! `http://ADDR/v3/directline/attachments/{id}`, served without auth (the
//! random id is the key, like Direct Line's attachment URLs).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, header};
use serde_json::{Value, json};

use super::activity;
use super::auth::{Caller, random_id};
use super::conversation::Conversation;
use super::error::ApiError;
use super::multipart::{self, Part};
use super::state::{EmulatorState, StoredAttachment, lock};

/// Content type of an activity part in an upload.
const ACTIVITY_PART: &str = "application/vnd.microsoft.activity";

/// Stores the files, posts the message and waits for the bot.
pub async fn upload(
    state: &Arc<EmulatorState>,
    conversation: &Arc<Conversation>,
    caller: &Caller,
    user_id: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Value, ApiError> {
    let content_type = header_str(headers, header::CONTENT_TYPE);
    let (activity, files) = match multipart::boundary(content_type.unwrap_or_default()) {
        Some(boundary) => split_multipart(body, &boundary).await?,
        None => (None, vec![raw_file(headers, body)]),
    };
    if files.is_empty() {
        return Err(ApiError::bad_argument("The upload contains no file"));
    }
    let mut activity = activity.unwrap_or_else(|| json!({ "type": "message" }));
    attach(state, &mut activity, files);
    if let Some(user) = user_id.filter(|_| !activity["from"]["id"].is_string()) {
        activity["from"] = json!({ "id": user });
    }
    activity::post(state, conversation, activity, caller.bound_user()).await
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The whole body as one file.
fn raw_file(headers: &HeaderMap, body: Bytes) -> Part {
    let filename = header_str(headers, header::CONTENT_DISPOSITION)
        .and_then(|value| multipart::param(value, "filename"));
    Part {
        name: None,
        filename,
        content_type: header_str(headers, header::CONTENT_TYPE).map(str::to_string),
        data: body,
    }
}

/// The activity part (checked like a posted activity) and the file parts.
async fn split_multipart(
    body: Bytes,
    boundary: &str,
) -> Result<(Option<Value>, Vec<Part>), ApiError> {
    let parts = multipart::parse(body, boundary)
        .await
        .ok_or_else(|| ApiError::bad_argument("Malformed multipart body"))?;
    let mut activity = None;
    let mut files = Vec::new();
    for part in parts {
        let is_activity = part
            .content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with(ACTIVITY_PART))
            || part.name.as_deref() == Some("activity");
        if is_activity {
            activity = Some(activity::parse(&part.data)?);
        } else {
            files.push(part);
        }
    }
    Ok((activity, files))
}

/// Stores the files and appends them to the activity's attachments.
fn attach(state: &EmulatorState, activity: &mut Value, files: Vec<Part>) {
    if !activity["attachments"].is_array() {
        activity["attachments"] = json!([]);
    }
    for (index, file) in files.into_iter().enumerate() {
        let content_type = file
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into());
        let name = file
            .filename
            .or(file.name)
            .unwrap_or_else(|| format!("file{}", index + 1));
        let id = random_id(32);
        let url = format!("{}/v3/directline/attachments/{id}", state.base_url());
        let stored = StoredAttachment {
            content_type: content_type.clone(),
            bytes: file.data,
        };
        lock(&state.attachments).insert(id, stored);
        if let Some(list) = activity["attachments"].as_array_mut() {
            list.push(json!({ "contentType": content_type, "contentUrl": url, "name": name }));
        }
    }
}
