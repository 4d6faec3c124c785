//! How a card's decision ended: the `outcome` label of the SSO metrics and
//! log lines.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The bot (or token service) took the token; the card was removed.
    Success,
    /// The bot or token service refused the token; or the exchange call failed.
    Rejected,
    /// The provider has no token for this user.
    NoToken,
    /// The provider could not answer.
    ProviderError,
    /// No decision within `sso.timeout_ms`.
    Timeout,
    /// The card's `sasUrl` host is not allowed.
    NotAllowed,
    /// The conversation token or the user id needed for the invoke is unknown.
    NoContext,
    /// The requester is not the conversation's owner or not the user the
    /// card was sent to: their credentials are not spent on it.
    PrincipalMismatch,
    /// The card asks for a token for a resource not in
    /// `sso.oauth2.allowed_resources`.
    ResourceNotAllowed,
    /// A bound was reached: the card id is over 512 bytes, or the set, the
    /// conversation or the process already runs its share of decisions.
    OverLimit,
}

impl Outcome {
    /// Whether the decision ended before any token left the proxy.
    pub fn sent_nothing(self) -> bool {
        matches!(
            self,
            Outcome::NoToken
                | Outcome::ProviderError
                | Outcome::NotAllowed
                | Outcome::NoContext
                | Outcome::PrincipalMismatch
                | Outcome::ResourceNotAllowed
                | Outcome::OverLimit
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::NoToken => "no_token",
            Outcome::ProviderError => "provider_error",
            Outcome::Timeout => "timeout",
            Outcome::NotAllowed => "not_allowed",
            Outcome::NoContext => "no_context",
            Outcome::PrincipalMismatch => "principal_mismatch",
            Outcome::ResourceNotAllowed => "resource_not_allowed",
            Outcome::OverLimit => "over_limit",
        }
    }
}
