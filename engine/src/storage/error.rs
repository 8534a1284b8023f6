//! Storage errors: every one names the backend, the operation and the path.

use std::fmt;

/// The kind of request that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Listing a level.
    List,
    /// Reading an object or a byte range of it.
    Get,
    /// Writing an object.
    Put,
    /// Deleting objects.
    Delete,
    /// Opening or configuring the store.
    Open,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::List => "LIST",
            Operation::Get => "GET",
            Operation::Put => "PUT",
            Operation::Delete => "DELETE",
            Operation::Open => "OPEN",
        })
    }
}

/// What went wrong, for callers that react differently to each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object does not exist (deleted by retention, never written).
    NotFound,
    /// A conditional create found the object already there.
    AlreadyExists,
    /// Credentials were refused.
    PermissionDenied,
    /// The store could not be reached, timed out, or failed on its side; retrying may help.
    Unavailable,
    /// An object holds something other than what its name promises.
    InvalidData,
    /// Anything else (bad configuration, unsupported operation).
    Other,
}

/// A failed request, before the replica names itself and the operation.
#[derive(Debug)]
pub struct BackendError {
    /// What went wrong.
    kind: ErrorKind,
    /// One line for a user.
    message: String,
    /// The object or file the failure was at, when not the one asked for (an upload's
    /// scratch object, the local file being uploaded).
    at: Option<String>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// An error of `kind`, described by `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BackendError {
        BackendError {
            kind,
            message: message.into(),
            at: None,
            cause: None,
        }
    }

    /// The same error, at `at` rather than the object the request was for.
    pub fn at(mut self, at: impl fmt::Display) -> BackendError {
        self.at = Some(at.to_string());
        self
    }

    /// The same error, of another kind.
    pub fn of_kind(mut self, kind: ErrorKind) -> BackendError {
        self.kind = kind;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error this one was made from, if any.
    pub fn into_cause(self) -> Option<Box<dyn std::error::Error + Send + Sync>> {
        self.cause
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

impl From<object_store::Error> for BackendError {
    fn from(e: object_store::Error) -> BackendError {
        let (kind, message) = classify(&e);
        BackendError {
            kind,
            message,
            at: None,
            cause: Some(Box::new(e)),
        }
    }
}

impl From<std::io::Error> for BackendError {
    /// A local file's error: only a missing file has a kind of its own; a short read is
    /// damaged data; nothing local is worth retrying.
    fn from(e: std::io::Error) -> BackendError {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::UnexpectedEof => ErrorKind::InvalidData,
            _ => ErrorKind::Other,
        };
        BackendError {
            kind,
            message: e.to_string(),
            at: None,
            cause: Some(Box::new(e)),
        }
    }
}

/// A failed storage request.
///
/// Its message is complete on its own (the cause is summarised into it), so the original
/// `object_store` error is not chained as `source()`; [`StorageError::cause`] has it.
#[derive(Debug)]
pub struct StorageError {
    /// The replica the request went to (its URL, credentials never included).
    backend: String,
    /// The request.
    operation: Operation,
    /// The object or prefix, relative to the backend.
    path: String,
    /// What went wrong.
    kind: ErrorKind,
    message: String,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.operation)?;
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        write!(f, " on {}: {}", self.backend, self.message)
    }
}

impl std::error::Error for StorageError {}

impl StorageError {
    pub(crate) fn new(
        backend: &str,
        operation: Operation,
        path: impl fmt::Display,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> StorageError {
        StorageError {
            backend: backend.to_owned(),
            operation,
            path: path.to_string(),
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// The same error for another waiter on the one failed request (without the original
    /// cause, which cannot be copied).
    pub(crate) fn copy(&self) -> StorageError {
        StorageError {
            backend: self.backend.clone(),
            operation: self.operation,
            path: self.path.clone(),
            kind: self.kind,
            message: self.message.clone(),
            cause: None,
        }
    }

    /// Names the replica and the request a backend's error was for.
    pub(crate) fn from_backend(
        backend: &str,
        operation: Operation,
        path: impl fmt::Display,
        e: BackendError,
    ) -> StorageError {
        let path = match &e.at {
            Some(at) => at.clone(),
            None => path.to_string(),
        };
        let (kind, message) = (e.kind, e.message.clone());
        StorageError {
            backend: backend.to_owned(),
            operation,
            path,
            kind,
            message,
            cause: e.into_cause(),
        }
    }

    /// The replica the request went to (its URL, credentials never included).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The request.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The object or prefix, relative to the replica.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The underlying error, when the store returned one.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    /// Whether the object was not there.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Whether a conditional create found the object already written.
    pub fn is_already_exists(&self) -> bool {
        self.kind == ErrorKind::AlreadyExists
    }
}

/// What an `object_store` error means, and one line saying so.
pub(crate) fn classify(e: &object_store::Error) -> (ErrorKind, String) {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => (ErrorKind::NotFound, "not found".to_string()),
        E::AlreadyExists { .. } => (ErrorKind::AlreadyExists, "already exists".to_string()),
        E::Precondition { .. } | E::NotModified { .. } => {
            (ErrorKind::AlreadyExists, "precondition failed".to_string())
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            (ErrorKind::PermissionDenied, describe(e))
        }
        E::Generic { .. } => {
            let message = describe(e);
            let kind = if message.contains("NoSuchBucket") || message.contains("credentials") {
                ErrorKind::Other
            } else if message.contains("AccessDenied") || message.contains("HTTP 403") {
                ErrorKind::PermissionDenied
            } else if looks_transient(&message) {
                ErrorKind::Unavailable
            } else {
                // Unknown: permanent, so it fails fast instead of being retried forever.
                ErrorKind::Other
            };
            (kind, message)
        }
        _ => (ErrorKind::Other, describe(e)),
    }
}

/// Whether an error's text is one of a failure that retrying can cure: the server or the
/// network, not the request.
fn looks_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "timed out",
        "timeout",
        "connection",
        "connect error",
        "error sending request",
        "reset by peer",
        "broken pipe",
        "unexpected eof",
        "incomplete",
        "error decoding response body",
        "http 500",
        "http 502",
        "http 503",
        "http 504",
        "slowdown",
        "internalerror",
        "serviceunavailable",
        "requesttimeout",
    ]
    .iter()
    .any(|t| m.contains(t))
}

/// A one-line account of an `object_store` error. Its own messages nest the whole chain
/// several times over; a user needs the S3 error code when the server sent one, otherwise
/// the innermost cause, and how often it was retried.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![e.to_string()];
    let mut cur = e;
    while let Some(next) = cur.source() {
        chain.push(next.to_string());
        cur = next;
    }
    let all = chain.join("\n");
    if all.contains("169.254.169.254") {
        return "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                or AWS_PROFILE with ~/.aws/credentials"
            .into();
    }
    let retries = all
        .split("after ")
        .nth(1)
        .and_then(|rest| rest.split(" retries").next())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .map(|n| format!(" (after {n} retries)"))
        .unwrap_or_default();
    if let Some(code) = xml_field(&all, "Code") {
        let status = all
            .split("status code: ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .map(|s| format!("HTTP {s}: "))
            .unwrap_or_default();
        let message = xml_field(&all, "Message")
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return format!("{status}{code}{message}{retries}");
    }
    let innermost = chain
        .iter()
        .rev()
        .find(|m| !m.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown error".into());
    format!("{innermost}{retries}")
}

fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{tag}>"))?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(message: &str) -> StorageError {
        StorageError::from_backend(
            "s3",
            Operation::Get,
            "x",
            object_store::Error::Generic {
                store: "S3",
                source: message.to_owned().into(),
            }
            .into(),
        )
    }

    #[test]
    fn unknown_errors_are_permanent_and_network_ones_transient() {
        assert_eq!(
            generic("the bucket policy forbids this operation").kind,
            ErrorKind::Other
        );
        assert_eq!(
            generic("error sending request: connection reset by peer").kind,
            ErrorKind::Unavailable
        );
        assert_eq!(
            generic("Server returned HTTP 503 Service Unavailable").kind,
            ErrorKind::Unavailable
        );
    }
}
