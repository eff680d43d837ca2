//! Admin authentication: bearer tokens held as SHA-256 hashes and compared in constant time,
//! company scoping by `X-Company`, permissions, and a per-token rate limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::error::AdminError;
use crate::config::{AdminConfig, AdminToken, Companies, Permission};

/// The configured tokens and one rate limiter each.
pub struct Tokens {
    grants: Vec<(AdminToken, DefaultDirectRateLimiter)>,
    limit: u32,
}

impl Tokens {
    /// Builds the token table from `[admin]`.
    pub fn new(config: &AdminConfig) -> Self {
        let per_minute = NonZeroU32::new(config.rate_limit_per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            grants: config
                .tokens
                .iter()
                .map(|token| {
                    (
                        token.clone(),
                        RateLimiter::direct(Quota::per_minute(per_minute)),
                    )
                })
                .collect(),
            limit: per_minute.get(),
        }
    }

    /// The grant whose hash matches `presented`. Every grant is compared, in constant time.
    fn find(&self, presented: &str) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (index, (grant, _)) in self.grants.iter().enumerate() {
            if bool::from(grant.sha256.ct_eq(&digest)) {
                found = Some(index);
            }
        }
        found
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.grants.len())
            .finish_non_exhaustive()
    }
}

/// An authenticated caller acting for one company.
#[derive(Debug)]
pub struct Caller {
    pub token_name: String,
    pub company: Uuid,
    permissions: Vec<Permission>,
}

impl Caller {
    /// Refuses with 403 unless the token holds `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), AdminError> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(AdminError::Forbidden(match permission {
                Permission::View => "this token lacks the webhook.view permission",
                Permission::Manage => "this token lacks the webhook.manage permission",
            }))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Tokens>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tokens = Arc::<Tokens>::from_ref(state);
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(AdminError::Unauthorized)?;
        let index = tokens.find(presented).ok_or(AdminError::Unauthorized)?;
        let (grant, limiter) = &tokens.grants[index];

        if let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return Err(AdminError::RateLimited {
                limit: tokens.limit,
                retry_after: retry_after.max(1),
                reset: now + retry_after.max(1),
            });
        }

        let company = parts
            .headers
            .get("x-company")
            .ok_or_else(|| AdminError::InvalidRequest("the X-Company header is required".into()))?
            .to_str()
            .ok()
            .and_then(|text| Uuid::try_parse(text.trim()).ok())
            .ok_or_else(|| AdminError::InvalidRequest("X-Company must be a company uuid".into()))?;
        let granted = match &grant.companies {
            Companies::All => true,
            Companies::Only(list) => list.contains(&company),
        };
        if !granted {
            return Err(AdminError::Forbidden(
                "this token is not granted this company",
            ));
        }
        let caller = Self {
            token_name: grant.name.clone(),
            company,
            permissions: grant.permissions.clone(),
        };
        // Reads need webhook.view and every other method webhook.manage: refused here, before
        // any request body is read, so a view-only token cannot make the port buffer bodies.
        let read = matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        caller.require(if read {
            Permission::View
        } else {
            Permission::Manage
        })?;
        Ok(caller)
    }
}
