//! Tenants: the name a request gives, by a gateway's header or OpenAI's `user` field, mapped to
//! the scheduler's client index within a fixed bound, with the bounded label metrics use.

use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderName};

use super::ApiError;

/// The label of requests that name no tenant.
pub const NO_TENANT: &str = "(none)";
/// The label of tenants beyond the bound, who share one client index.
pub const OTHER_TENANTS: &str = "(other)";
/// The longest tenant name taken.
const MAX_NAME_LEN: usize = 256;

/// The tenant of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// The scheduler's client index: 0 without a tenant, 1..=max for the first tenants seen,
    /// max + 1 for every later one.
    pub client_index: u32,
    /// The name as given, or [`NO_TENANT`].
    pub name: String,
    /// The metrics label: the name, [`NO_TENANT`], or [`OTHER_TENANTS`] beyond the bound.
    pub label: String,
}

/// The tenants a server has seen, in the order it saw them.
pub struct Tenants {
    header: HeaderName,
    max_tenants: u32,
    named: Mutex<Vec<String>>,
}

impl Tenants {
    /// Tenants named by `header` (which wins) or `user`, at most `max_tenants` of them apart.
    pub fn new(header: HeaderName, max_tenants: u32) -> Self {
        Self {
            header,
            max_tenants,
            named: Mutex::new(Vec::new()),
        }
    }

    /// Every tenant with its own index so far, with that index.
    pub fn known(&self) -> Vec<(u32, String)> {
        self.named
            .lock()
            .map(|named| (1..).zip(named.iter().cloned()).collect())
            .unwrap_or_default()
    }

    /// The tenant of a request with these headers and this `user` field.
    pub fn resolve(&self, headers: &HeaderMap, user: Option<&str>) -> Result<Tenant, ApiError> {
        let from_header = match headers.get(&self.header) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::invalid_param(
                    self.header.as_str().to_owned(),
                    format!("the {} header must be visible ASCII", self.header),
                )
            })?),
        };
        let (name, param) = match (from_header, user) {
            (Some(name), _) if !name.is_empty() => (name, self.header.as_str().to_owned()),
            (_, Some(name)) if !name.is_empty() => (name, "user".to_owned()),
            _ => {
                return Ok(Tenant {
                    client_index: 0,
                    name: NO_TENANT.into(),
                    label: NO_TENANT.into(),
                })
            }
        };
        if name.len() > MAX_NAME_LEN {
            return Err(ApiError::invalid_param(
                param,
                format!("a tenant name is at most {MAX_NAME_LEN} bytes"),
            ));
        }
        let index = self.index_of(name);
        Ok(Tenant {
            client_index: index,
            name: name.to_owned(),
            label: if index > self.max_tenants {
                OTHER_TENANTS.into()
            } else {
                name.to_owned()
            },
        })
    }

    fn index_of(&self, name: &str) -> u32 {
        let overflow = self.max_tenants + 1;
        let Ok(mut named) = self.named.lock() else {
            return overflow;
        };
        if let Some(position) = named.iter().position(|known| known == name) {
            return position as u32 + 1;
        }
        if (named.len() as u32) < self.max_tenants {
            named.push(name.to_owned());
            return named.len() as u32;
        }
        overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(tenant: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(tenant) = tenant {
            headers.insert("x-tenant", tenant.parse().expect("a header value"));
        }
        headers
    }

    #[test]
    fn the_header_wins_and_tenants_past_the_bound_share_the_overflow_index() {
        let tenants = Tenants::new(HeaderName::from_static("x-tenant"), 2);
        let resolve = |header: Option<&str>, user: Option<&str>| {
            tenants.resolve(&headers(header), user).expect("a tenant")
        };
        assert_eq!(resolve(None, None).client_index, 0);
        assert_eq!(resolve(Some(""), Some("")).label, NO_TENANT);
        assert_eq!(resolve(Some("acme"), Some("bob")).client_index, 1);
        assert_eq!(resolve(None, Some("bob")).client_index, 2);
        assert_eq!(resolve(None, Some("acme")).client_index, 1, "stable");
        let carol = resolve(None, Some("carol"));
        assert_eq!(
            (carol.client_index, carol.label.as_str()),
            (3, OTHER_TENANTS)
        );
        assert_eq!(carol.name, "carol");
        assert_eq!(resolve(Some("dave"), None).client_index, 3);
        assert_eq!(tenants.known(), [(1, "acme".into()), (2, "bob".into())]);
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(tenants.resolve(&headers(None), Some(&long)).is_err());
    }
}
