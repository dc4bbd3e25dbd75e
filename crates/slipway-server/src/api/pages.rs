//! The web UI's routes: each page is a template of [`crate::ui`] filled from the store,
//! each button an HTML form that posts and redirects back (so everything but live updates
//! works without JavaScript). Logging in with an admin token opens a server-side session
//! whose random id is the (HttpOnly, SameSite=Strict) cookie ([`super::guard`]). SameSite
//! does not stop a page on another port or a sibling subdomain, so every POST here must
//! also be same-origin ([`PageUser`]) and, once signed in, carry the session's form token
//! (the hidden `csrf` field, [`PageForm`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::rest::{self, AddRepo, RepoSettings, RunRequest, SecretRequest, find_build, find_repo};
use super::{ApiError, RepoPath, guard};
use crate::app::AppState;
use crate::auth;
use crate::builds;
use crate::store::Session;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/repos/new", get(new_repo_page))
        .route("/repos", axum::routing::post(add_repo))
        .route("/repos/{*path}", get(repo_page).post(repo_form))
        .route("/runners", get(runners_page))
        .route("/registry", get(registry_page))
        .route("/proxy", get(proxy_page))
        .merge(super::notify_pages::routes())
        .merge(super::deploy_pages::routes())
        .route(
            "/registry/{*path}",
            get(registry_repo_page).post(registry_form),
        )
        .route("/static/{*path}", get(asset))
}

/// A signed-in admin (by a live session of an admin token), or a redirect to the login
/// page; a request that is not a GET or HEAD must also be same-origin.
#[derive(Debug)]
pub struct PageUser(pub Session);

/// Why a UI request was not served.
#[derive(Debug)]
pub enum Refused {
    /// No live session: to the login page.
    Login,
    /// A state-changing request from another origin, or without its form token.
    Forbidden(String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Login => Redirect::to("/login").into_response(),
            Refused::Forbidden(why) => (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("refused: {why}\n"),
            )
                .into_response(),
        }
    }
}

fn changes(parts: &Parts) -> bool {
    !matches!(parts.method, Method::GET | Method::HEAD)
}

impl FromRequestParts<Arc<AppState>> for PageUser {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // Checked first: a cross-origin post is refused as such, signed in or not.
        if changes(parts) {
            guard::same_origin(state, &parts.headers).map_err(Refused::Forbidden)?;
        }
        let session = guard::session(state, &parts.headers)
            .await
            .ok_or(Refused::Login)?;
        if session.token.scope != auth::SCOPE_ADMIN {
            return Err(Refused::Login);
        }
        Ok(PageUser(session))
    }
}

/// A signed-in admin's form post: same-origin ([`PageUser`]), urlencoded, and carrying the
/// session's form token in `csrf`.
#[derive(Debug)]
pub struct PageForm {
    pub user: Session,
    pub form: HashMap<String, String>,
}

impl FromRequest<Arc<AppState>> for PageForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let PageUser(user) = PageUser::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Form(form) =
            Form::<HashMap<String, String>>::from_request(Request::from_parts(parts, body), state)
                .await
                .map_err(IntoResponse::into_response)?;
        if !guard::form_token_ok(&user, form.get("csrf").map(String::as_str)) {
            return Err(Refused::Forbidden(
                "the form's token (`csrf`) is missing or belongs to another session; reload \
                 the page and send the form again"
                    .to_owned(),
            )
            .into_response());
        }
        Ok(PageForm { user, form })
    }
}

/// A page, or the error page with the error's status.
pub(super) fn render(
    state: &AppState,
    template: &str,
    title: &str,
    user: Option<&Session>,
    mut ctx: Value,
) -> Response {
    if let Some(obj) = ctx.as_object_mut() {
        obj.insert("title".into(), title.into());
        obj.insert(
            "user".into(),
            user.map_or(Value::Null, |s| json!({"name": s.token.name})),
        );
        if let Some(session) = user {
            obj.insert("csrf".into(), session.csrf.clone().into());
        }
    }
    match state.ui.render(template, ctx) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("rendering {template}: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering {template}: {e}"),
            )
                .into_response()
        }
    }
}

pub(super) fn error_page(state: &AppState, user: Option<&Session>, e: ApiError) -> Response {
    let status = e.status;
    let mut page = render(
        state,
        "error.html",
        "Error",
        user,
        json!({"status": status.as_u16(), "message": e.message}),
    );
    *page.status_mut() = status;
    page
}

async fn index(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    let result: Result<Value, ApiError> = async {
        let mut repos = Vec::new();
        for repo in state.store.repos().await? {
            let last = state
                .store
                .builds(repo.id, 1, None)
                .await?
                .into_iter()
                .next();
            repos.push(json!({"repo": repo, "last_build": last}));
        }
        let builds: Vec<Value> = state
            .store
            .recent_builds(20)
            .await?
            .into_iter()
            .map(|(build, repo)| json!({"build": build, "repo": repo}))
            .collect();
        Ok(json!({"repos": repos, "builds": builds}))
    }
    .await;
    match result {
        Ok(ctx) => render(&state, "index.html", "Repositories", Some(&user), ctx),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn login_page(State(state): State<Arc<AppState>>) -> Response {
    render(
        &state,
        "login.html",
        "Sign in",
        None,
        json!({"error": null}),
    )
}

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfoOpt(peer): ConnectInfoOpt,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // A page of another origin must not sign the browser in (to a token of its choosing).
    if let Err(why) = guard::same_origin(&state, &headers) {
        return Refused::Forbidden(why).into_response();
    }
    let presented = form
        .get("token")
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    match auth::check(&state.store, &presented).await {
        Some(token) if token.scope == auth::SCOPE_ADMIN => {
            let https = guard::is_https(&state, &headers, peer);
            match guard::open_session(&state, &token, https).await {
                Ok((_, cookie)) => {
                    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
                }
                Err(e) => error_page(&state, None, e),
            }
        }
        _ => {
            let mut page = render(
                &state,
                "login.html",
                "Sign in",
                None,
                json!({"error": "That token is not an admin token of this server."}),
            );
            *page.status_mut() = StatusCode::UNAUTHORIZED;
            page
        }
    }
}

/// Ends the session in the store (so its cookie is worthless even if kept) and clears it.
async fn logout(
    State(state): State<Arc<AppState>>,
    ConnectInfoOpt(peer): ConnectInfoOpt,
    headers: HeaderMap,
    _form: PageForm,
) -> Response {
    let https = guard::is_https(&state, &headers, peer);
    let cookie = guard::close_session(&state, &headers, https).await;
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// The peer address when the listener recorded one.
#[derive(Debug)]
pub struct ConnectInfoOpt(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ConnectInfoOpt {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ConnectInfoOpt(guard::peer(&parts.extensions)))
    }
}

async fn new_repo_page(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    render(
        &state,
        "new_repo.html",
        "Add a repository",
        Some(&user),
        json!({}),
    )
}

pub(super) fn field(form: &HashMap<String, String>, name: &str) -> Option<String> {
    form.get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn checked(form: &HashMap<String, String>, name: &str) -> bool {
    form.get(name)
        .is_some_and(|v| v == "on" || v == "true" || v == "1")
}

async fn add_repo(
    State(state): State<Arc<AppState>>,
    PageForm { user, form }: PageForm,
) -> Response {
    let req = AddRepo {
        name: field(&form, "name").unwrap_or_default(),
        clone_url: field(&form, "clone_url").unwrap_or_default(),
        provider: field(&form, "provider"),
        config_path: field(&form, "config_path"),
        default_branch: field(&form, "default_branch"),
        trusted: false,
        auto_cancel: false,
        max_running: 0,
        status_url: None,
        status_token: None,
        webhook_secret: None,
    };
    match rest::create_repo(&state, req).await {
        Ok(repo) => Redirect::to(&format!("/repos/{}/settings", repo.name)).into_response(),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

#[derive(Debug, serde::Deserialize, Default)]
pub struct PageQuery {
    before: Option<i64>,
}

async fn repo_page(
    State(state): State<Arc<AppState>>,
    PageUser(user): PageUser,
    Path(path): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    match repo_page_inner(&state, &user, &path, query).await {
        Ok(page) => page,
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn repo_page_inner(
    state: &Arc<AppState>,
    user: &Session,
    path: &str,
    query: PageQuery,
) -> Result<Response, ApiError> {
    let path = RepoPath::parse(path).ok_or_else(|| ApiError::not_found("no such page"))?;
    let repo = find_repo(state, &path.repo).await?;
    let webhook_url = super::webhook_url(state);
    Ok(match path.rest().as_slice() {
        [] => {
            let page = 25;
            let builds = state.store.builds(repo.id, page, query.before).await?;
            let next_before = (builds.len() as i64 == page)
                .then(|| builds.last().map(|b| b.number))
                .flatten();
            render(
                state,
                "repo.html",
                &repo.name,
                Some(user),
                json!({"repo": repo, "builds": builds, "webhook_url": webhook_url, "next_before": next_before}),
            )
        }
        ["builds", n] => {
            let build = find_build(state, &repo, n).await?;
            let stages = state.store.stage_states(build.id).await?;
            let steps = state.store.steps_of_build(build.id).await?;
            let stages: Vec<Value> = stages
                .iter()
                .map(|s| {
                    let own: Vec<&crate::store::Step> =
                        steps.iter().filter(|st| st.stage_id == s.id).collect();
                    json!({"stage": s, "steps": own})
                })
                .collect();
            let artifacts = state.store.artifacts(build.id).await?;
            let deploys = state.store.revisions_of_build(build.id).await?;
            render(
                state,
                "build.html",
                &format!("{} #{}", repo.name, build.number),
                Some(user),
                json!({"repo": repo, "build": build, "stages": stages, "artifacts": artifacts,
                       "registry_host": state.host, "deploys": deploys}),
            )
        }
        ["run"] => {
            let (branches, tags) = match state.mirrors.fetch(repo.id, &repo.clone_url, &[]).await {
                Ok(()) => match state.mirrors.refs(repo.id).await {
                    Ok(refs) => (refs.branches, refs.tags),
                    Err(_) => (Vec::new(), Vec::new()),
                },
                Err(e) => {
                    tracing::warn!("{}: {e}", repo.name);
                    (Vec::new(), Vec::new())
                }
            };
            render(
                state,
                "run.html",
                "Run pipeline",
                Some(user),
                json!({"repo": repo, "branches": branches, "tags": tags}),
            )
        }
        ["secrets"] => {
            let secrets = rest::secret_list(state, &repo).await?;
            render(
                state,
                "secrets.html",
                "Secrets",
                Some(user),
                json!({"repo": repo, "secrets": secrets}),
            )
        }
        ["settings"] => {
            // The page shows the webhook secret to copy: the plain one, not the stored seal.
            let mut shown = repo.clone();
            shown.webhook_secret = super::webhook_secret(state, &repo)?;
            render(
                state,
                "settings.html",
                "Settings",
                Some(user),
                json!({"repo": shown, "webhook_url": webhook_url}),
            )
        }
        _ => return Err(ApiError::not_found("no such page")),
    })
}

async fn repo_form(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    PageForm { user, form }: PageForm,
) -> Response {
    match repo_form_inner(&state, &user, &path, form).await {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

/// `KEY=VALUE` lines (blank lines and `#` comments skipped).
pub fn parse_params(text: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!(
                "parameter line {}: `{line}` is not KEY=VALUE",
                i + 1
            ))
        })?;
        params.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(params)
}

async fn repo_form_inner(
    state: &Arc<AppState>,
    user: &Session,
    path: &str,
    form: HashMap<String, String>,
) -> Result<String, ApiError> {
    let path = RepoPath::parse(path).ok_or_else(|| ApiError::not_found("no such page"))?;
    let repo = find_repo(state, &path.repo).await?;
    let build_url = |n: i64| format!("/repos/{}/builds/{n}", repo.name);
    Ok(match path.rest().as_slice() {
        ["run"] => {
            let kind = field(&form, "kind").unwrap_or_else(|| "branch".into());
            let pick = |name: &str| {
                if kind == name {
                    field(&form, name)
                } else {
                    None
                }
            };
            let req = RunRequest {
                branch: pick("branch"),
                tag: pick("tag"),
                commit: pick("commit"),
                params: parse_params(form.get("params").map_or("", String::as_str))?,
            };
            let target = req.target(&repo)?;
            let build =
                builds::run_manual(state, &repo, target, req.params, &user.token.name).await?;
            build_url(build.number)
        }
        ["builds", n, "restart"] => {
            let build = find_build(state, &repo, n).await?;
            build_url(
                builds::restart(state, &repo, &build, &user.token.name)
                    .await?
                    .number,
            )
        }
        ["builds", n, "cancel"] => {
            let build = find_build(state, &repo, n).await?;
            builds::cancel(state, &build).await?;
            build_url(build.number)
        }
        ["builds", n, "promote"] => {
            let build = find_build(state, &repo, n).await?;
            let target = field(&form, "target").unwrap_or_default();
            let params = parse_params(form.get("params").map_or("", String::as_str))?;
            build_url(
                builds::promote(state, &repo, &build, &target, params, &user.token.name)
                    .await?
                    .number,
            )
        }
        ["secrets"] => {
            let req = SecretRequest {
                name: field(&form, "name").unwrap_or_default(),
                value: form.get("value").cloned().unwrap_or_default(),
                allow_pull_request: checked(&form, "allow_pull_request"),
            };
            rest::put_secret(state, &repo, &req).await?;
            format!("/repos/{}/secrets", repo.name)
        }
        ["secrets", name, "delete"] => {
            state.store.delete_secret(repo.id, name).await?;
            format!("/repos/{}/secrets", repo.name)
        }
        ["settings"] => {
            let settings = RepoSettings {
                clone_url: field(&form, "clone_url"),
                config_path: Some(field(&form, "config_path").unwrap_or_default()),
                default_branch: field(&form, "default_branch"),
                trusted: Some(checked(&form, "trusted")),
                auto_cancel: Some(checked(&form, "auto_cancel")),
                max_running: field(&form, "max_running").and_then(|v| v.parse().ok()),
                status_url: Some(field(&form, "status_url").unwrap_or_default()),
                status_token: field(&form, "status_token"),
                // One pattern a line; the textarea is always sent, so blank clears the list.
                registry_paths: form
                    .get("registry_paths")
                    .map(|text| text.lines().map(str::to_owned).collect()),
            };
            rest::update_settings(state, repo.clone(), settings).await?;
            format!("/repos/{}/settings", repo.name)
        }
        _ => return Err(ApiError::not_found("no such page")),
    })
}

async fn proxy_page(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    let ctx = match &state.config.edge {
        Some(edge) => {
            let status = edge.status();
            json!({"running": true, "routes": status.routes, "conflicts": status.conflicts,
                "diagnostics": status.diagnostics, "docker_error": status.docker_error})
        }
        None => json!({"running": false, "routes": [], "conflicts": []}),
    };
    render(&state, "proxy.html", "Proxy", Some(&user), ctx)
}

async fn runners_page(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    let result: Result<Value, ApiError> = async {
        let running = state.store.running_stages().await?;
        let now = crate::now_ms();
        let online_window = crate::app::millis(state.config.poll_wait) * 2 + 10_000;
        let runners: Vec<Value> = state
            .store
            .runners()
            .await?
            .into_iter()
            .map(|r| {
                let n = running.iter().filter(|s| s.runner_id == Some(r.id)).count();
                json!({"runner": r, "online": now - r.last_seen < online_window, "running": n})
            })
            .collect();
        Ok(json!({"runners": runners}))
    }
    .await;
    match result {
        Ok(ctx) => render(&state, "runners.html", "Runners", Some(&user), ctx),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn asset(Path(path): Path<String>) -> Response {
    match crate::ui::Ui::asset(&format!("/static/{path}")) {
        Some((content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn registry_page(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    let store = state.registry.store();
    let (names, _) = store.repositories_page(None, 10_000, |_| true);
    let repositories: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let tags = slipway_registry::name::RepoName::parse(&name)
                .and_then(|n| store.tags(&n).ok().flatten())
                .map_or(0, |t| t.len());
            json!({"name": name, "tags": tags})
        })
        .collect();
    render(
        &state,
        "registry.html",
        "Registry",
        Some(&user),
        json!({"repositories": repositories}),
    )
}

async fn registry_repo_page(
    State(state): State<Arc<AppState>>,
    PageUser(user): PageUser,
    Path(name): Path<String>,
) -> Response {
    match registry_tags(&state, &name).await {
        Ok(tags) => render(
            &state,
            "registry_repo.html",
            &name,
            Some(&user),
            json!({"name": name, "registry_host": state.host, "tags": tags}),
        ),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

/// Each tag with its digest, push time and image size (the manifest and every blob and
/// child manifest it refers to).
async fn registry_tags(state: &AppState, name: &str) -> Result<Vec<Value>, ApiError> {
    let store = state.registry.store();
    let repo = slipway_registry::name::RepoName::parse(name)
        .ok_or_else(|| ApiError::not_found(format!("`{name}` is not a repository name")))?;
    let internal = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("registry {name}: {e}"),
        )
    };
    let tags = store
        .tags(&repo)
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no repository `{name}` in the registry")))?;
    let mut out = Vec::new();
    for tag in tags {
        let Some(info) = store.tag(&repo, &tag).map_err(internal)? else {
            continue;
        };
        let mut size = 0u64;
        if let Some(meta) = store.manifest(&repo, &info.digest).map_err(internal)? {
            size += meta.size;
            for reference in &meta.references {
                size += state
                    .registry
                    .blobs()
                    .size(reference)
                    .await
                    .map_err(internal)?
                    .unwrap_or(0);
            }
        }
        out.push(
            json!({"tag": tag, "digest": info.digest.to_string(), "size": size,
                        "pushed": info.updated_at.saturating_mul(1000)}),
        );
    }
    Ok(out)
}

async fn registry_form(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    PageForm { user, .. }: PageForm,
) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        [name @ .., "tags", tag, "delete"] if !name.is_empty() => {
            let name = name.join("/");
            match state.registry.delete_tag(&name, tag, &user.token.name) {
                Ok(_) => Redirect::to(&format!("/registry/{name}")).into_response(),
                Err(e) => error_page(
                    &state,
                    Some(&user),
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
                ),
            }
        }
        _ => error_page(&state, Some(&user), ApiError::not_found("no such page")),
    }
}
