//! Erasure of one person or a whole tenant (see DESIGN.md, "Erasure"). This build receives and
//! lists requests; executing them (the `erasure` step: plan, primary phase through the
//! primary-database and blob deleters, backup rewrites, ledger) comes next.
//!
//! Receiving a request validates everything a person could get wrong — the tenant, the
//! identifier kind, the identifier itself — before anything is written: bad input is exit 2 and
//! leaves no trace. Nothing here ever prints, logs or stores the plaintext identifier: the
//! request holds its keyed hash and the identifier sealed under the tenant's data key.

pub mod certificate;
pub mod export;
pub mod identify;
pub mod intake;
pub mod ledger;
pub mod notice;
pub mod render;
pub mod request;
pub mod resolve;
pub mod run;

use std::sync::Arc;

use crate::check::Checked;
use crate::clock::Clock;
use crate::keys::Keyring;
use crate::source::Source;
use crate::store::Store;
use request::{Request, Scope, State};

/// What `lethe erase subject` asks for.
#[derive(Debug, Clone)]
pub struct SubjectRequest {
    pub tenant: String,
    pub kind: String,
    /// The identifier as given (it is normalized before anything else sees it).
    pub id: String,
    pub immediate: bool,
    pub reference: Option<String>,
}

/// A tenant id and a request id as lethe writes them (letters, digits, `-`, `_`): anything
/// else is bad usage, named, before a key is built from it.
pub fn check_names(tenant: &str, id: Option<&str>) -> crate::Result<()> {
    if !crate::util::is_safe_ident(tenant) {
        return Err(crate::Error::Usage(format!(
            "{tenant:?} is not a tenant id (letters, digits, - and _)\n  fix: pass a tenant id the tenants table lists"
        )));
    }
    if let Some(id) = id
        && !crate::util::is_safe_ident(id)
    {
        return Err(crate::Error::Usage(format!(
            "{id:?} is not a request id\n  fix: copy it from `lethe requests ls`"
        )));
    }
    Ok(())
}

/// The tenant must be one the tenants table lists (by a valid id).
pub(crate) fn known_tenant(c: &Checked, tenant: &str) -> crate::Result<()> {
    let list = Source::open(&c.config.source)?.tenants(&c.data_map)?;
    if list.valid.iter().any(|t| t.id == tenant) {
        return Ok(());
    }
    Err(crate::Error::Usage(format!(
        "tenant {tenant:?} is not in the tenants table ({}); nothing was recorded\n  fix: pass a tenant id the tenants table lists",
        c.data_map.tenants.table
    )))
}

fn check_reference(reference: Option<&str>) -> crate::Result<()> {
    match reference {
        Some(r) if r.trim().is_empty() || r.len() > 200 || r.chars().any(char::is_control) => {
            Err(crate::Error::Usage(
                "--ref must be 1 to 200 characters on one line (the controller's ticket or case number, not personal data); nothing was recorded".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// Open the keyring and the tenant's data key, as the snapshot does (never a new key over
/// snapshots made under a lost one).
async fn tenant_key(
    c: &Checked,
    store: &Store,
    tenant: &str,
) -> crate::Result<(Keyring, crate::keys::DataKey)> {
    crate::pipeline::refuse_new_keys(&c.config, store).await?;
    let mut keyring = Keyring::open(&c.config.keyring, &c.config.master_key, true)?;
    match crate::pipeline::tenant_key(&c.config, &mut keyring, store, tenant).await? {
        Ok(k) => Ok((keyring, k)),
        Err(lost) => Err(crate::Error::Failed(lost)),
    }
}

/// Where a request comes from, and the id it gets (`None`: a new random one).
#[derive(Debug, Clone)]
pub struct Origin {
    pub id: Option<String>,
    pub source: &'static str,
}

impl Origin {
    pub fn cli() -> Origin {
        Origin {
            id: None,
            source: "cli",
        }
    }
}

/// Receive a subject erasure: validate, then store the request (create-only).
pub async fn erase_subject(
    c: &Checked,
    ask: &SubjectRequest,
    clock: &Arc<dyn Clock>,
) -> crate::Result<Request> {
    erase_subject_as(c, ask, clock, &Origin::cli()).await
}

/// [`erase_subject`] for a request from `origin`.
pub async fn erase_subject_as(
    c: &Checked,
    ask: &SubjectRequest,
    clock: &Arc<dyn Clock>,
    origin: &Origin,
) -> crate::Result<Request> {
    let normal = validate_subject(c, &ask.tenant, &ask.kind, &ask.id)?;
    check_reference(ask.reference.as_deref())?;
    known_tenant(c, &ask.tenant)?;
    let store = Store::create(&c.config.store)?;
    let (keyring, key) = tenant_key(c, &store, &ask.tenant).await?;
    let mut r = received(
        c,
        &ask.tenant,
        Scope::Subject,
        ask.immediate,
        ask.reference.clone(),
        clock,
        origin,
    )?;
    r.identifier = Some(request::seal(&key, &r.id, &normal));
    r.subject = Some(keyring.subject_hash(&format!("{}:{normal}", ask.kind)));
    r.kind = Some(ask.kind.clone());
    store_new(&store, &r).await?;
    Ok(r)
}

/// A subject's identifier, checked and normalized: its kind is one the data map declares, its
/// value has the shape of one (bad usage, exit 2, otherwise; the message never quotes it).
pub(crate) fn validate_subject(
    c: &Checked,
    tenant: &str,
    kind: &str,
    id: &str,
) -> crate::Result<String> {
    check_names(tenant, None)?;
    let kinds = c.data_map.identifier_kinds();
    if !kinds.contains_key(kind) {
        let known: Vec<&str> = kinds.keys().copied().collect();
        return Err(crate::Error::Usage(format!(
            "unknown identifier kind {:?}: the data map declares {}; nothing was recorded\n  fix: pass one of them with --kind, or declare the column in the data map: identifiers = {{ <column> = \"{}\" }}",
            kind,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
            kind
        )));
    }
    let normal = identify::normalize(kind, id, c.policy.erasure.phone_country.as_deref())
        .map_err(|e| crate::Error::Usage(format!("{e}\n  nothing was recorded")))?;
    Ok(normal)
}

/// Receive a tenant offboarding: validate, then store the request (create-only).
pub async fn erase_tenant(
    c: &Checked,
    tenant: &str,
    immediate: bool,
    reference: Option<String>,
    clock: &Arc<dyn Clock>,
) -> crate::Result<Request> {
    erase_tenant_as(c, tenant, immediate, reference, clock, &Origin::cli()).await
}

/// [`erase_tenant`] for a request from `origin`.
pub async fn erase_tenant_as(
    c: &Checked,
    tenant: &str,
    immediate: bool,
    reference: Option<String>,
    clock: &Arc<dyn Clock>,
    origin: &Origin,
) -> crate::Result<Request> {
    check_names(tenant, None)?;
    check_reference(reference.as_deref())?;
    known_tenant(c, tenant)?;
    let store = Store::create(&c.config.store)?;
    let r = received(
        c,
        tenant,
        Scope::Tenant,
        immediate,
        reference,
        clock,
        origin,
    )?;
    store_new(&store, &r).await?;
    Ok(r)
}

/// A request of `scope` received now, due by the policy (or now, `immediate`).
fn received(
    c: &Checked,
    tenant: &str,
    scope: Scope,
    immediate: bool,
    reference: Option<String>,
    clock: &Arc<dyn Clock>,
    origin: &Origin,
) -> crate::Result<Request> {
    let now = clock.now();
    let (received_at, due_primary, due_backups) = request::due(now, immediate, &c.policy.erasure)?;
    Ok(Request {
        format: request::FORMAT.into(),
        id: origin.id.clone().unwrap_or_else(|| request::new_id(now)),
        tenant: tenant.to_string(),
        scope,
        kind: None,
        subject: None,
        identifier: None,
        reference,
        source: origin.source.into(),
        immediate,
        received_at,
        due_primary,
        due_backups,
        state: State::Received,
        policy_version: c.policy.version.clone(),
        resolved: None,
        primary: None,
        key_destroyed: None,
        backups: None,
        rewritten: Vec::new(),
        notices: Vec::new(),
    })
}

async fn store_new(store: &Store, r: &Request) -> crate::Result<()> {
    if !request::create(store, r).await? {
        return Err(crate::Error::Failed(format!(
            "a request {} of tenant {} exists already; nothing was recorded (run the command again for a new id)",
            r.id, r.tenant
        )));
    }
    tracing::info!(tenant = %r.tenant, request = %r.id, scope = ?r.scope, kind = r.kind.as_deref().unwrap_or(""), immediate = r.immediate, due_primary = %r.due_primary, "erasure request received");
    Ok(())
}

/// What request `id` of `tenant` covers in the primary database now: the person's identifiers
/// (counted by kind) and the rows per table holding any of them. Reads only.
pub async fn preview(
    c: &Checked,
    tenant: &str,
    id: &str,
) -> crate::Result<(Request, resolve::Resolution)> {
    check_names(tenant, Some(id))?;
    let store = Store::open(&c.config.store)?;
    let Some(r) = request::read(&store, tenant, id).await? else {
        return Err(crate::Error::Usage(format!(
            "no request {id} of tenant {tenant}\n  fix: see `lethe requests ls --tenant {tenant}`"
        )));
    };
    let (Some(kind), Some(sealed)) = (r.kind.clone(), r.identifier.clone()) else {
        return Ok((r, resolve::Resolution::default()));
    };
    let keyring = Keyring::open(&c.config.keyring, &c.config.master_key, false)?;
    let key = keyring.data_key(tenant)?;
    let value = request::open(&key, id, &sealed).ok_or_else(|| {
        crate::Error::Failed(format!(
            "the identifier of request {id} does not open with tenant {tenant}'s data key (edited, or sealed under another key)"
        ))
    })?;
    let mut db = crate::retention::db::Db::open(&c.config.source, false, &c.config.retention)?;
    let found = resolve::resolve(
        &mut db,
        &c.data_map,
        tenant,
        &kind,
        &value,
        c.policy.erasure.phone_country.as_deref(),
    )
    .map_err(|e| match e {
        resolve::ResolveError::Db(e) => crate::Error::from(e),
        other => crate::Error::Failed(other.to_string()),
    })?;
    Ok((r, found))
}
