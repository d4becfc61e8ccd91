//! Task name → handler. A handler is anything implementing [`Handler`]: the built-in `exec`
//! and `http` kinds, or a Rust async closure registered with [`Registry::register`]. Owns
//! the lookup and the per-task policy ([`TaskOptions`]); running, timing out and retrying
//! are the pipeline's.

use super::spec::{TaskKind, TaskOptions, TaskSpec};
use super::task::{Handler, TaskRequest, TaskResult};
use super::Error;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

/// Adapts an async closure into a [`Handler`].
struct FnHandler<F>(F);

#[async_trait::async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(TaskRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    async fn call(&self, req: TaskRequest) -> TaskResult {
        (self.0)(req).await
    }
}

/// A registered task.
#[derive(Clone)]
pub struct Registered {
    /// Runs it.
    pub handler: Arc<dyn Handler>,
    /// Its policy.
    pub options: TaskOptions,
}

/// The tasks a worker can run, by Celery task name.
#[derive(Clone, Default)]
pub struct Registry {
    /// Name → task.
    tasks: HashMap<String, Registered>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("tasks", &self.names())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an async Rust function with default options.
    pub fn register<F, Fut>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(TaskRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.register_with(name, TaskOptions::default(), f)
    }

    /// Registers an async Rust function with explicit options.
    pub fn register_with<F, Fut>(
        &mut self,
        name: impl Into<String>,
        options: TaskOptions,
        f: F,
    ) -> &mut Self
    where
        F: Fn(TaskRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.register_handler(name, options, Arc::new(FnHandler(f)))
    }

    /// Registers any [`Handler`].
    pub fn register_handler(
        &mut self,
        name: impl Into<String>,
        options: TaskOptions,
        handler: Arc<dyn Handler>,
    ) -> &mut Self {
        self.tasks
            .insert(name.into(), Registered { handler, options });
        self
    }

    /// Registers a configured `exec` or `http` task.
    ///
    /// # Errors
    /// An empty command, a header whose environment variable is unset, or an HTTP client
    /// that cannot be built.
    pub fn add_spec(&mut self, name: impl Into<String>, spec: &TaskSpec) -> Result<(), Error> {
        let name = name.into();
        let handler: Arc<dyn Handler> = match &spec.kind {
            TaskKind::Exec { command, env, cwd } => Arc::new(super::exec::ExecHandler::new(
                &name,
                command,
                env,
                cwd.as_deref(),
            )?),
            TaskKind::Http {
                url,
                headers,
                timeout,
            } => Arc::new(super::http::HttpHandler::new(
                &name, url, headers, *timeout,
            )?),
        };
        self.register_handler(name, spec.options(), handler);
        Ok(())
    }

    /// Looks a task up.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Registered> {
        self.tasks.get(name)
    }

    /// Registered names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// The task table of a running worker, replaceable while it runs (SIGHUP reloads it): each
/// message looks its task up once, so a run in flight keeps the handler it started with.
#[derive(Clone, Default)]
pub struct LiveRegistry(Arc<RwLock<Arc<Registry>>>);

impl std::fmt::Debug for LiveRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.current().fmt(f)
    }
}

impl LiveRegistry {
    /// The table now.
    #[must_use]
    pub fn current(&self) -> Arc<Registry> {
        // A poisoned lock still holds a whole table (replacing is one assignment).
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the table; runs in flight are not affected.
    pub fn replace(&self, registry: Registry) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(registry);
    }
}

impl From<Registry> for LiveRegistry {
    fn from(r: Registry) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(r))))
    }
}

impl From<Arc<Registry>> for LiveRegistry {
    fn from(r: Arc<Registry>) -> Self {
        Self(Arc::new(RwLock::new(r)))
    }
}
