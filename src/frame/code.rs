//! The error codes carried in `Error`, `UploadFailed` and `DownloadFailed` frames.

/// Why the server refused or ended a connection; carried in [`Frame::Error`](super::Frame::Error).
///
/// Unknown codes decode as [`ErrorCode::Other`] so that an older client can still show the message
/// of a newer server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The hello carried a protocol version this server does not speak.
    VersionMismatch,
    /// Someone online already uses that name.
    NameTaken,
    /// The name breaks the naming rules (see [`crate::rules`]).
    BadName,
    /// The room name breaks the naming rules.
    BadRoom,
    /// The peer sent something that is not valid protocol (garbage, oversize, unknown kind...).
    Protocol,
    /// The peer did not read its messages fast enough and was dropped.
    TooSlow,
    /// The peer sent no hello in time.
    HelloTimeout,
    /// A text message broke the text rules (too long, empty).
    BadText,
    /// The file is larger than the relay accepts.
    FileTooLarge,
    /// The sender's stored bytes would exceed their quota.
    QuotaExceeded,
    /// The relay's disk has no room for the file.
    DiskFull,
    /// The bytes received do not match the size or SHA-256 announced.
    HashMismatch,
    /// No such file is waiting for you.
    NoSuchFile,
    /// Nobody would receive the file (empty room, no `--to`).
    NoRecipients,
    /// The same transfer is already running on another connection.
    Busy,
    /// The relay could not read or write its storage.
    Storage,
    /// A transfer frame that does not fit the transfer (wrong id, too many bytes, bad offset).
    BadTransfer,
    /// The relay's access password is missing or wrong.
    AccessDenied,
    /// The name belongs to an account and the password is missing or wrong.
    BadPassword,
    /// The relay has no room for another connection (in all, or from this address), or, for a
    /// joined client, for the big frame it is sending (the relay's memory for frames being read
    /// is in use: try again in a moment).
    RelayFull,
    /// Too many logins are being checked right now; try again in a moment.
    LoginBusy,
    /// The recipient is offline and has no account, so nothing can wait for them.
    UnknownRecipient,
    /// The recipient has too many messages or files waiting; this one was not kept for them.
    RecipientFull,
    /// The name looks too much like an existing account's name (Unicode confusables).
    NameConfusable,
    /// A message id outside the documented range (1 to 2^63 - 1; 0 means "no receipt").
    BadMessageId,
    /// Too many uploads in progress (on this connection, or for this user).
    TooManyUploads,
    /// The message could not be stored (the relay's disk is too full, or its database failed).
    NotStored,
    /// A field is longer than the protocol allows (an upload key, a file name).
    FieldTooLong,
    /// The same account (or guest, by its resume token) logged in on another connection, which
    /// took the name over. The client must not reconnect by itself: the two would take the name
    /// from each other in a loop.
    LoggedInElsewhere,
    /// The relay speaks only TLS and the peer spoke plaintext (sent in plaintext, so that any
    /// client can read why).
    TlsRequired,
    /// The file was being downloaded while it arrived, and its upload failed (its size or hash
    /// did not match, or it was cancelled): the bytes received so far must be thrown away.
    SenderFailed,
    /// The file was being downloaded while it arrived, and its sender stopped sending (its link
    /// dropped, or nothing came for the upload stall time). The file is offered again if it
    /// completes; the bytes received so far are good and may be kept to resume.
    SenderStopped,
    /// A code this build does not know.
    Other(u8),
}

impl ErrorCode {
    /// Whether the relay closes the connection after sending this code in an `Error` frame. The
    /// relay and the client both decide by this one function: a refusal of one message or one
    /// request leaves the connection up; a refused hello or a broken protocol ends it.
    pub fn closes_connection(self) -> bool {
        !matches!(
            self,
            ErrorCode::BadText
                | ErrorCode::UnknownRecipient
                | ErrorCode::RecipientFull
                | ErrorCode::BadMessageId
                | ErrorCode::NotStored
        )
    }

    /// Whether a client whose hello was refused, or whose connection was closed, with this code
    /// may try the same again later and expect another answer: the relay was full or busy, or
    /// cut a connection that stalled. Any other refusal would only be repeated (a password, a
    /// name, a version), or must not be answered by coming back (LoggedInElsewhere). The client
    /// library's reconnect policy reads it (`client/session.rs`).
    pub fn retry_may_help(self) -> bool {
        matches!(
            self,
            ErrorCode::RelayFull | ErrorCode::LoginBusy | ErrorCode::TooSlow | ErrorCode::HelloTimeout
        )
    }

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::NameTaken => 2,
            ErrorCode::BadName => 3,
            ErrorCode::BadRoom => 4,
            ErrorCode::Protocol => 5,
            ErrorCode::TooSlow => 6,
            ErrorCode::HelloTimeout => 7,
            ErrorCode::BadText => 8,
            ErrorCode::FileTooLarge => 9,
            ErrorCode::QuotaExceeded => 10,
            ErrorCode::DiskFull => 11,
            ErrorCode::HashMismatch => 12,
            ErrorCode::NoSuchFile => 13,
            ErrorCode::NoRecipients => 14,
            ErrorCode::Busy => 15,
            ErrorCode::Storage => 16,
            ErrorCode::BadTransfer => 17,
            ErrorCode::AccessDenied => 18,
            ErrorCode::BadPassword => 19,
            ErrorCode::RelayFull => 20,
            ErrorCode::LoginBusy => 21,
            ErrorCode::UnknownRecipient => 22,
            ErrorCode::RecipientFull => 23,
            ErrorCode::NameConfusable => 24,
            ErrorCode::BadMessageId => 25,
            ErrorCode::TooManyUploads => 26,
            ErrorCode::NotStored => 27,
            ErrorCode::FieldTooLong => 28,
            ErrorCode::LoggedInElsewhere => 29,
            ErrorCode::TlsRequired => 30,
            ErrorCode::SenderFailed => 31,
            ErrorCode::SenderStopped => 32,
            ErrorCode::Other(b) => b,
        }
    }

    pub(crate) fn from_byte(b: u8) -> ErrorCode {
        match b {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::NameTaken,
            3 => ErrorCode::BadName,
            4 => ErrorCode::BadRoom,
            5 => ErrorCode::Protocol,
            6 => ErrorCode::TooSlow,
            7 => ErrorCode::HelloTimeout,
            8 => ErrorCode::BadText,
            9 => ErrorCode::FileTooLarge,
            10 => ErrorCode::QuotaExceeded,
            11 => ErrorCode::DiskFull,
            12 => ErrorCode::HashMismatch,
            13 => ErrorCode::NoSuchFile,
            14 => ErrorCode::NoRecipients,
            15 => ErrorCode::Busy,
            16 => ErrorCode::Storage,
            17 => ErrorCode::BadTransfer,
            18 => ErrorCode::AccessDenied,
            19 => ErrorCode::BadPassword,
            20 => ErrorCode::RelayFull,
            21 => ErrorCode::LoginBusy,
            22 => ErrorCode::UnknownRecipient,
            23 => ErrorCode::RecipientFull,
            24 => ErrorCode::NameConfusable,
            25 => ErrorCode::BadMessageId,
            26 => ErrorCode::TooManyUploads,
            27 => ErrorCode::NotStored,
            28 => ErrorCode::FieldTooLong,
            29 => ErrorCode::LoggedInElsewhere,
            30 => ErrorCode::TlsRequired,
            31 => ErrorCode::SenderFailed,
            32 => ErrorCode::SenderStopped,
            other => ErrorCode::Other(other),
        }
    }
}
