//! Policy as code: Cedar policy sets, validated against governance's schema, and their
//! decisions (permit, forbid, or permit with a person's approval).
//!
//! A [`PolicySet`] is Cedar policies plus [`Settings`] (the agents' attributes and the tool
//! arguments policies may read). [`PolicySet::parse`] refuses anything that would not
//! evaluate as written: a syntax error, a policy the schema ([`PolicySet::schema_json`]) does
//! not type, a template, a policy without a unique `@id`, an `@approval` on a forbid. Once
//! parsed, [`PolicySet::decide`] is a pure function of the [`Request`]. `cases` runs test cases
//! from files and compares two sets.
//!
//! # Invariants
//!
//! - Pure: no I/O, no clock (the request carries the time), no tokio.
//! - Forbid wins; a permit carrying `@approval("…")` turns a permit into an approval, unless a
//!   permit carrying `@preapproved("…")` (an approval saved as a rule) matches too; an
//!   evaluation error refuses (the erroring policies are named), so a broken policy fails closed.
//! - A set's hash covers its policies and settings exactly as applied, so a decision event names
//!   the version that decided.
//! - A decision evaluates only the policies whose scope can match its action and resource (the
//!   set is sliced once, when parsed); that never changes a decision, its reasons or its errors
//!   (a unit test compares it with evaluating the whole set).

pub mod cases;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The Cedar namespace of governance's entity types and actions.
pub const NAMESPACE: &str = "Governance";

/// The annotation that turns a permit into a permit with approval (its value: why).
pub const APPROVAL_ANNOTATION: &str = "approval";

/// The annotation that turns an approval into a permit for what a permit carrying it matches
/// (its value: where it came from, e.g. an approval saved as a rule). A forbid still wins.
pub const PREAPPROVED_ANNOTATION: &str = "preapproved";

/// The annotation naming a policy (its id in decisions and events); required on every policy.
pub const ID_ANNOTATION: &str = "id";

/// Why a policy set was refused, or a request could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policies do not parse.
    #[error("the policies do not parse: {0}")]
    Syntax(String),
    /// The policies do not validate against the schema.
    #[error("the policies do not validate against governance's Cedar schema: {0}")]
    Invalid(String),
    /// The settings (agents, arguments) are not what they should be.
    #[error("the policy set's settings are invalid: {0}")]
    Settings(String),
    /// A request could not be built (an argument of the wrong type, an unknown agent id shape).
    #[error("the request cannot be evaluated: {0}")]
    Request(String),
    /// A test case file is malformed.
    #[error("{0}")]
    Cases(String),
}

/// What an agent is, for policies (`principal.team`, `principal.environment`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAttributes {
    /// The agent's team (empty when not given).
    #[serde(default)]
    pub team: String,
    /// Its environment (`prod`, `staging`, …; empty when not given).
    #[serde(default)]
    pub environment: String,
}

/// The type of a declared tool argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgumentType {
    /// A string (`context.arguments.to like "*@example.com"`).
    String,
    /// An integer (`context.arguments.amount > 1000`).
    Long,
    /// A boolean.
    Bool,
}

/// A set's settings: the agents' attributes, and the tool arguments policies may read (each
/// optional in a request: policies test `context.arguments has amount` first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Agent id → attributes. An agent not listed has an empty team and environment.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentAttributes>,
    /// Argument name → type. Arguments not declared here are not visible to policies.
    #[serde(default)]
    pub arguments: BTreeMap<String, ArgumentType>,
}

/// What is being decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A tool call (`Action::"tool_call"` on `Tool::"name"`).
    Tool(&'a str),
    /// An LLM call (`Action::"llm_call"` on `Model::"provider:model"`, in `Provider::"provider"`).
    Model {
        /// The provider (`openai`).
        provider: &'a str,
        /// The model (`gpt-4o-mini`).
        model: &'a str,
    },
    /// A tool of an MCP server (`Action::"mcp_tool_call"` on `McpTool::"server/tool"`, in
    /// `McpServer::"server"`).
    McpTool {
        /// The server's name.
        server: &'a str,
        /// The tool's name.
        tool: &'a str,
    },
}

impl Resource<'_> {
    /// The Cedar action's id.
    pub fn action(&self) -> &'static str {
        ACTIONS[self.action_index()]
    }

    /// The action's index in [`ACTIONS`].
    fn action_index(&self) -> usize {
        match self {
            Self::Tool(_) => 0,
            Self::Model { .. } => 1,
            Self::McpTool { .. } => 2,
        }
    }

    fn uid_and_parent(&self) -> (EntityUid, Option<EntityUid>) {
        let t = &*TYPES;
        match *self {
            Self::Tool(tool) => (uid(&t.tool, tool), None),
            Self::Model { provider, model } => (
                uid(&t.model, &format!("{provider}:{model}")),
                Some(uid(&t.provider, provider)),
            ),
            Self::McpTool { server, tool } => (
                uid(&t.mcp_tool, &format!("{server}/{tool}")),
                Some(uid(&t.mcp_server, server)),
            ),
        }
    }

    /// The resource as a Cedar entity uid (`Governance::Tool::"send_email"`).
    pub fn cedar_uid(&self) -> String {
        self.uid_and_parent().0.to_string()
    }
}

/// One request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The agent (the principal).
    pub agent: &'a str,
    /// What it wants to use.
    pub resource: Resource<'a>,
    /// Its session (`context.session`).
    pub session: &'a str,
    /// The call's arguments (a JSON object; only declared ones reach the policies).
    pub arguments: Option<&'a serde_json::Value>,
    /// The call's estimated cost, micro-USD (`context.estimated_cost_micros`).
    pub estimated_cost_micros: i64,
    /// What the session has spent so far, micro-USD (`context.session_spend_micros`).
    pub session_spend_micros: i64,
    /// When (`context.now`, a Cedar datetime; also `context.hour_utc` and `context.weekday_utc`,
    /// 1 = Monday … 7 = Sunday).
    pub now: time::OffsetDateTime,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Allowed.
    Permit,
    /// Refused.
    Forbid,
    /// Allowed once a person approves.
    Approval,
}

impl Effect {
    /// `permit`, `forbid` or `approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permit => "permit",
            Self::Forbid => "forbid",
            Self::Approval => "approval",
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Permit, forbid or approval.
    pub effect: Effect,
    /// The ids of the determining policies: the forbids that matched (or, when nothing
    /// permitted, none), the approval permits, or the permits.
    pub determining: Vec<String>,
    /// For an approval: the `@approval` reasons of the determining policies, joined by "; ".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Evaluation errors (each refuses), by policy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A parsed, validated Cedar policy set with its settings.
#[derive(Debug, Clone)]
pub struct PolicySet {
    source: String,
    settings: Settings,
    settings_json: String,
    hash: String,
    set: cedar_policy::PolicySet,
    /// `@approval` reasons by policy id.
    approvals: HashMap<String, String>,
    /// The `@preapproved` permits.
    preapproved: HashSet<String>,
    /// Each listed agent's entity, built once.
    agents: HashMap<String, Entity>,
    ids: Vec<String>,
    /// The policies by scope (`None`: evaluate the whole set).
    slices: Option<Slices>,
    /// Whether any policy may read `context.now` (its text names `now`): building a Cedar
    /// datetime costs more than the rest of the context, so it is left out when nothing reads it.
    reads_now: bool,
    /// The entities of recent (agent, resource) pairs: they depend only on the set's settings.
    entities: Arc<Mutex<EntityCache>>,
    authorizer: Authorizer,
}

/// Entities by (agent, resource).
type EntityCache = HashMap<(String, EntityUid), Arc<Entities>>;

/// How many (agent, resource) pairs' entities a set keeps (then it starts again).
const ENTITY_CACHE: usize = 4_096;

/// The actions, in the order of [`Types::actions`].
const ACTIONS: [&str; 3] = ["tool_call", "llm_call", "mcp_tool_call"];

/// Governance's entity type names and action uids, parsed once (Cedar parses a type name with
/// its full grammar: doing it on every decision cost more than deciding).
struct Types {
    agent: EntityTypeName,
    tool: EntityTypeName,
    model: EntityTypeName,
    provider: EntityTypeName,
    mcp_tool: EntityTypeName,
    mcp_server: EntityTypeName,
    actions: [EntityUid; 3],
}

fn type_name(ty: &str) -> EntityTypeName {
    // The type names are this crate's constants, so they always parse.
    #[allow(clippy::expect_used)]
    EntityTypeName::from_str(&format!("{NAMESPACE}::{ty}")).expect("a valid type name")
}

static TYPES: std::sync::LazyLock<Types> = std::sync::LazyLock::new(|| {
    let action = type_name("Action");
    Types {
        agent: type_name("Agent"),
        tool: type_name("Tool"),
        model: type_name("Model"),
        provider: type_name("Provider"),
        mcp_tool: type_name("McpTool"),
        mcp_server: type_name("McpServer"),
        actions: ACTIONS
            .map(|a| EntityUid::from_type_name_and_id(action.clone(), EntityId::new(a))),
    }
});

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// The policies each request can match, by their scope (Cedar checks a policy's scope before
/// its conditions and stops at a scope that does not match, so leaving those policies out
/// changes neither the decision nor its reasons or errors: it only saves evaluating them).
#[derive(Debug, Clone, Default)]
struct Slices {
    /// Per action: the policies whose resource scope is not one resource (`resource`,
    /// `resource in …`, `resource is …`), to be evaluated for every resource.
    general: [cedar_policy::PolicySet; 3],
    /// Per (action, resource): those plus the policies naming that resource
    /// (`resource == …`).
    exact: HashMap<(usize, EntityUid), cedar_policy::PolicySet>,
}

/// Beyond this many policy entries in the slices (a set with many policies on one resource
/// each *and* many general ones), decisions evaluate the whole set instead.
const MAX_SLICED_ENTRIES: usize = 200_000;

impl Slices {
    /// `None` when slicing would take more memory than it is worth.
    fn of(set: &cedar_policy::PolicySet) -> Option<Self> {
        use cedar_policy::{ActionConstraint, ResourceConstraint};
        let types = &*TYPES;
        let mut general: [Vec<cedar_policy::Policy>; 3] = Default::default();
        let mut exact: HashMap<(usize, EntityUid), Vec<cedar_policy::Policy>> = HashMap::new();
        for p in set.policies() {
            let actions: Vec<usize> = match p.action_constraint() {
                ActionConstraint::Eq(a) => types
                    .actions
                    .iter()
                    .position(|k| *k == a)
                    .into_iter()
                    .collect(),
                ActionConstraint::In(list) if list.iter().all(|a| types.actions.contains(a)) => {
                    list.iter()
                        .filter_map(|a| types.actions.iter().position(|k| k == a))
                        .collect()
                }
                // Anything else (no action scope, an action group): every action.
                _ => (0..ACTIONS.len()).collect(),
            };
            for a in actions {
                match p.resource_constraint() {
                    ResourceConstraint::Eq(r) => exact.entry((a, r)).or_default().push(p.clone()),
                    _ => general[a].push(p.clone()),
                }
            }
        }
        let entries: usize = exact
            .iter()
            .map(|((a, _), v)| v.len() + general[*a].len())
            .sum();
        if entries > MAX_SLICED_ENTRIES {
            return None;
        }
        let build = |policies: &[cedar_policy::Policy]| {
            cedar_policy::PolicySet::from_policies(policies.iter().cloned()).ok()
        };
        let mut out = Self::default();
        for (a, g) in general.iter().enumerate() {
            out.general[a] = build(g)?;
        }
        for ((a, r), mut v) in exact {
            v.extend(general[a].iter().cloned());
            out.exact.insert((a, r), build(&v)?);
        }
        Some(out)
    }

    fn for_request(&self, action: usize, resource: &EntityUid) -> &cedar_policy::PolicySet {
        // The key's clone is one small string: cheaper than evaluating the policies it skips.
        self.exact
            .get(&(action, resource.clone()))
            .unwrap_or(&self.general[action])
    }
}

/// The schema, in Cedar's JSON schema format, for these settings.
fn schema_json(settings: &Settings) -> serde_json::Value {
    use serde_json::json;
    let string = json!({ "type": "String" });
    let long = json!({ "type": "Long" });
    let arguments: serde_json::Map<String, serde_json::Value> = settings
        .arguments
        .iter()
        .map(|(name, ty)| {
            let t = match ty {
                ArgumentType::String => "String",
                ArgumentType::Long => "Long",
                ArgumentType::Bool => "Boolean",
            };
            (name.clone(), json!({ "type": t, "required": false }))
        })
        .collect();
    let context = json!({
        "type": "Record",
        "attributes": {
            "session": string,
            "arguments": { "type": "Record", "attributes": arguments },
            "estimated_cost_micros": long,
            "session_spend_micros": long,
            "now": { "type": "Extension", "name": "datetime" },
            "hour_utc": long,
            "weekday_utc": long,
        }
    });
    let applies = |resource: &str| {
        json!({ "appliesTo": {
            "principalTypes": ["Agent"],
            "resourceTypes": [resource],
            "context": context,
        }})
    };
    json!({ NAMESPACE: {
        "entityTypes": {
            "Agent": { "shape": { "type": "Record", "attributes": {
                "team": string, "environment": string,
            }}},
            "Tool": {},
            "Provider": {},
            "Model": { "memberOfTypes": ["Provider"] },
            "McpServer": {},
            "McpTool": { "memberOfTypes": ["McpServer"] },
        },
        "actions": {
            "tool_call": applies("Tool"),
            "llm_call": applies("Model"),
            "mcp_tool_call": applies("McpTool"),
        },
    }})
}

/// SHA-256 (hex) of a set: a version tag, then the policies and the settings' JSON, each
/// length-prefixed.
fn hash_of(source: &str, settings_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"governance/policy-set/v1\n");
    for part in [source, settings_json] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl PolicySet {
    /// Parses and validates `source` (Cedar policies) with `settings` (JSON, see [`Settings`];
    /// empty means none).
    pub fn parse(source: &str, settings: &str) -> Result<Self, PolicyError> {
        let parsed: Settings = if settings.trim().is_empty() {
            Settings::default()
        } else {
            serde_json::from_str(settings).map_err(|e| {
                PolicyError::Settings(format!(
                    "{e}; expected {{\"agents\": {{\"id\": {{\"team\": \"…\", \"environment\": \"…\"}}}}, \"arguments\": {{\"name\": \"string\" | \"long\" | \"bool\"}}}}"
                ))
            })?
        };
        Self::with_settings(source, parsed)
    }

    /// Parses and validates `source` with parsed settings.
    pub fn with_settings(source: &str, settings: Settings) -> Result<Self, PolicyError> {
        let schema = Schema::from_json_value(schema_json(&settings))
            .map_err(|e| PolicyError::Settings(format!("{e}")))?;
        let raw = cedar_policy::PolicySet::from_str(source)
            .map_err(|e| PolicyError::Syntax(render(&e)))?;
        if raw.templates().next().is_some() {
            return Err(PolicyError::Invalid(
                "templates are not supported: write each policy out in full".into(),
            ));
        }
        let mut set = cedar_policy::PolicySet::new();
        let mut approvals = HashMap::new();
        let mut preapproved = HashSet::new();
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        for p in raw.policies() {
            let loc = p.to_string();
            let first = loc.lines().next().unwrap_or_default().trim().to_owned();
            let Some(id) = p.annotation(ID_ANNOTATION).map(str::to_owned) else {
                return Err(PolicyError::Invalid(format!(
                    "every policy needs an @id(\"…\") annotation (its name in decisions and events); this one has none: {first}"
                )));
            };
            if id.trim().is_empty() || !seen.insert(id.clone()) {
                return Err(PolicyError::Invalid(format!(
                    "policy ids must be unique and not empty: @id(\"{id}\") is used twice or empty"
                )));
            }
            if let Some(reason) = p.annotation(APPROVAL_ANNOTATION) {
                if p.effect() == cedar_policy::Effect::Forbid {
                    return Err(PolicyError::Invalid(format!(
                        "policy {id}: @approval belongs on a permit (a permit that needs a person's approval); a forbid always refuses"
                    )));
                }
                if reason.trim().is_empty() {
                    return Err(PolicyError::Invalid(format!(
                        "policy {id}: @approval needs a reason, e.g. @approval(\"refunds over 1000 USD\")"
                    )));
                }
                approvals.insert(id.clone(), reason.to_owned());
            }
            if let Some(why) = p.annotation(PREAPPROVED_ANNOTATION) {
                if p.effect() == cedar_policy::Effect::Forbid {
                    return Err(PolicyError::Invalid(format!(
                        "policy {id}: @preapproved belongs on a permit; a forbid always refuses"
                    )));
                }
                if approvals.contains_key(&id) {
                    return Err(PolicyError::Invalid(format!(
                        "policy {id}: a policy is either @approval or @preapproved, not both"
                    )));
                }
                if why.trim().is_empty() {
                    return Err(PolicyError::Invalid(format!(
                        "policy {id}: @preapproved needs a note of where it came from"
                    )));
                }
                preapproved.insert(id.clone());
            }
            set.add(p.new_id(PolicyId::new(&id)))
                .map_err(|e| PolicyError::Invalid(render(&e)))?;
            ids.push(id);
        }
        let validation = Validator::new(schema).validate(&set, ValidationMode::Strict);
        if !validation.validation_passed() {
            let errors: Vec<String> = validation
                .validation_errors()
                .map(|e| format!("policy {}: {}", e.policy_id(), render(e)))
                .collect();
            return Err(PolicyError::Invalid(errors.join("; ")));
        }
        let agents = settings
            .agents
            .iter()
            .map(|(id, a)| agent_entity(id, a).map(|e| (id.clone(), e)))
            .collect::<Result<_, _>>()?;
        let settings_json =
            serde_json::to_string(&settings).map_err(|e| PolicyError::Settings(e.to_string()))?;
        let slices = Slices::of(&set);
        let reads_now = set.policies().any(|p| p.to_string().contains("now"));
        Ok(Self {
            hash: hash_of(source, &settings_json),
            source: source.to_owned(),
            settings,
            settings_json,
            approvals,
            preapproved,
            agents,
            ids,
            slices,
            reads_now,
            entities: Arc::default(),
            set,
            authorizer: Authorizer::new(),
        })
    }

    /// The Cedar schema these policies are validated against, in Cedar's JSON format.
    pub fn schema_json(settings: &Settings) -> serde_json::Value {
        schema_json(settings)
    }

    /// SHA-256 (hex) of the policies and settings.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The policies as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The settings as stored (JSON).
    pub fn settings_json(&self) -> &str {
        &self.settings_json
    }

    /// The policy ids, in source order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The policy's text, by id.
    pub fn policy_text(&self, id: &str) -> Option<String> {
        self.set.policy(&PolicyId::new(id)).map(ToString::to_string)
    }

    /// This set with one more policy: a `@preapproved` permit of exactly `agent` calling
    /// `tool` with the declared arguments `arguments` has (those not declared cannot be
    /// constrained and are named in a comment), identified `id`, noted `note`. What "approve
    /// and save as a rule" proposes.
    pub fn with_preapproval(
        &self,
        id: &str,
        note: &str,
        agent: &str,
        tool: &str,
        arguments: Option<&serde_json::Value>,
    ) -> Result<Self, PolicyError> {
        let mut conditions = Vec::new();
        let mut unconstrained = Vec::new();
        if let Some(serde_json::Value::Object(given)) = arguments {
            for (name, v) in given {
                let literal = match (self.settings.arguments.get(name), v) {
                    (Some(ArgumentType::String), serde_json::Value::String(s)) => {
                        Some(cedar_string(s))
                    }
                    (Some(ArgumentType::Long), serde_json::Value::Number(n)) => {
                        n.as_i64().map(|n| n.to_string())
                    }
                    (Some(ArgumentType::Bool), serde_json::Value::Bool(b)) => Some(b.to_string()),
                    _ => None,
                };
                match literal {
                    Some(l) => {
                        let key = cedar_string(name);
                        conditions.push(format!(
                            "context.arguments has {key} && context.arguments[{key}] == {l}"
                        ));
                    }
                    None => unconstrained.push(name.clone()),
                }
            }
        }
        let mut policy = String::new();
        if !unconstrained.is_empty() {
            let names: Vec<String> = unconstrained
                .iter()
                .map(|n| n.replace(['\n', '\r'], " "))
                .collect();
            policy.push_str(&format!(
                "// Arguments not declared in the settings, so not constrained: {}\n",
                names.join(", ")
            ));
        }
        policy.push_str(&format!(
            "@id({})\n@preapproved({})\npermit (\n    principal == {NAMESPACE}::Agent::{},\n    action == {NAMESPACE}::Action::\"tool_call\",\n    resource == {NAMESPACE}::Tool::{}\n)",
            cedar_string(id),
            cedar_string(note),
            cedar_string(agent),
            cedar_string(tool),
        ));
        if conditions.is_empty() {
            policy.push_str(";\n");
        } else {
            policy.push_str(&format!(
                "\nwhen {{\n    {}\n}};\n",
                conditions.join(" &&\n    ")
            ));
        }
        let mut source = self.source.trim_end().to_owned();
        source.push_str("\n\n");
        source.push_str(&policy);
        Self::with_settings(&source, self.settings.clone())
    }

    /// Decides `req`. A request that cannot be evaluated (an argument of a type other than
    /// declared) is refused, naming the problem in `errors`.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        match self.try_decide(req) {
            Ok(d) => d,
            Err(e) => Decision {
                effect: Effect::Forbid,
                determining: Vec::new(),
                approval: None,
                errors: vec![e.to_string()],
            },
        }
    }

    fn try_decide(&self, req: &Request<'_>) -> Result<Decision, PolicyError> {
        let principal = uid(&TYPES.agent, req.agent);
        let action_index = req.resource.action_index();
        let action = TYPES.actions[action_index].clone();
        let (resource, parent) = req.resource.uid_and_parent();
        let entities = self.entities_for(req.agent, &resource, parent)?;
        let context = self.context(req)?;
        let policies = match &self.slices {
            Some(s) => s.for_request(action_index, &resource),
            None => &self.set,
        };
        // Not checked against the schema again: this crate builds every request (principal,
        // resource and context types, declared arguments) to the schema's shape, and the set
        // was validated against it.
        let request = cedar_policy::Request::new(principal, action, resource, context, None)
            .map_err(|e| PolicyError::Request(render(&e)))?;
        let response = self.authorizer.is_authorized(&request, policies, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| render(e)).collect();
        let mut determining: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        determining.sort_unstable();
        if !errors.is_empty() {
            // Fail closed: a policy that could not be evaluated might have forbidden this.
            let mut failed: Vec<String> = diagnostics
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(p) => {
                        p.policy_id().to_string()
                    }
                })
                .collect();
            failed.sort_unstable();
            failed.dedup();
            return Ok(Decision {
                effect: Effect::Forbid,
                determining: failed,
                approval: None,
                errors,
            });
        }
        Ok(match response.decision() {
            CedarDecision::Deny => Decision {
                effect: Effect::Forbid,
                determining,
                approval: None,
                errors,
            },
            CedarDecision::Allow => {
                let approving: Vec<String> = determining
                    .iter()
                    .filter(|id| self.approvals.contains_key(*id))
                    .cloned()
                    .collect();
                let preapproving: Vec<String> = determining
                    .iter()
                    .filter(|id| self.preapproved.contains(*id))
                    .cloned()
                    .collect();
                if !approving.is_empty() && !preapproving.is_empty() {
                    // An approval saved as a rule covers this action: a permit, by that rule.
                    Decision {
                        effect: Effect::Permit,
                        determining: preapproving,
                        approval: None,
                        errors,
                    }
                } else if approving.is_empty() {
                    Decision {
                        effect: Effect::Permit,
                        determining,
                        approval: None,
                        errors,
                    }
                } else {
                    let reasons: Vec<&str> = approving
                        .iter()
                        .filter_map(|id| self.approvals.get(id).map(String::as_str))
                        .collect();
                    Decision {
                        effect: Effect::Approval,
                        approval: Some(reasons.join("; ")),
                        determining: approving,
                        errors,
                    }
                }
            }
        })
    }

    /// The agent's and the resource's entities (and the resource's parent), built once per
    /// pair.
    fn entities_for(
        &self,
        agent: &str,
        resource: &EntityUid,
        parent: Option<EntityUid>,
    ) -> Result<Arc<Entities>, PolicyError> {
        let key = (agent.to_owned(), resource.clone());
        if let Some(e) = self
            .entities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Arc::clone(e));
        }
        let agent_entity = match self.agents.get(agent) {
            Some(e) => e.clone(),
            None => agent_entity(agent, &AgentAttributes::default())?,
        };
        let mut list = vec![agent_entity];
        let parents = match parent {
            Some(p) => {
                list.push(Entity::new_no_attrs(p.clone(), HashSet::new()));
                HashSet::from([p])
            }
            None => HashSet::new(),
        };
        list.push(Entity::new_no_attrs(resource.clone(), parents));
        let built = Arc::new(
            Entities::from_entities(list, None).map_err(|e| PolicyError::Request(render(&e)))?,
        );
        let mut cache = self.entities.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= ENTITY_CACHE {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&built));
        Ok(built)
    }

    fn context(&self, req: &Request<'_>) -> Result<Context, PolicyError> {
        let mut args: Vec<(String, RestrictedExpression)> = Vec::new();
        if let Some(serde_json::Value::Object(given)) = req.arguments {
            for (name, ty) in &self.settings.arguments {
                let Some(v) = given.get(name) else { continue };
                let value = match (ty, v) {
                    (ArgumentType::String, serde_json::Value::String(s)) => {
                        RestrictedExpression::new_string(s.clone())
                    }
                    (ArgumentType::Long, serde_json::Value::Number(n)) if n.is_i64() => {
                        RestrictedExpression::new_long(n.as_i64().unwrap_or_default())
                    }
                    (ArgumentType::Bool, serde_json::Value::Bool(b)) => {
                        RestrictedExpression::new_bool(*b)
                    }
                    _ => {
                        return Err(PolicyError::Request(format!(
                            "argument {name} is declared {ty:?} but the call passed {v}"
                        )));
                    }
                };
                args.push((name.clone(), value));
            }
        }
        let arguments =
            RestrictedExpression::new_record(args).map_err(|e| PolicyError::Request(render(&e)))?;
        let now = req.now.to_offset(time::UtcOffset::UTC);
        let mut pairs = Vec::with_capacity(7);
        if self.reads_now {
            let iso = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            );
            pairs.push(("now".to_owned(), RestrictedExpression::new_datetime(iso)));
        }
        pairs.extend([
            (
                "session".to_owned(),
                RestrictedExpression::new_string(req.session.to_owned()),
            ),
            ("arguments".to_owned(), arguments),
            (
                "estimated_cost_micros".to_owned(),
                RestrictedExpression::new_long(req.estimated_cost_micros),
            ),
            (
                "session_spend_micros".to_owned(),
                RestrictedExpression::new_long(req.session_spend_micros),
            ),
            (
                "hour_utc".to_owned(),
                RestrictedExpression::new_long(i64::from(now.hour())),
            ),
            (
                "weekday_utc".to_owned(),
                RestrictedExpression::new_long(i64::from(now.weekday().number_from_monday())),
            ),
        ]);
        Context::from_pairs(pairs).map_err(|e| PolicyError::Request(render(&e)))
    }
}

fn agent_entity(id: &str, a: &AgentAttributes) -> Result<Entity, PolicyError> {
    let attrs = HashMap::from([
        (
            "team".to_owned(),
            RestrictedExpression::new_string(a.team.clone()),
        ),
        (
            "environment".to_owned(),
            RestrictedExpression::new_string(a.environment.clone()),
        ),
    ]);
    Entity::new(uid(&TYPES.agent, id), attrs, HashSet::new())
        .map_err(|e| PolicyError::Settings(format!("agent {id}: {}", render(&e))))
}

/// An error's message with its causes and help, on one line.
fn render(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A Cedar string literal: quoted, with backslashes, quotes and control characters escaped.
fn cedar_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scope shape a policy can have, conditions that read the agent, the arguments, the
    /// time (`context.now`) and one that errors at run time (an overflow).
    const POLICIES: &str = r#"
@id("eq") permit (principal, action == Governance::Action::"tool_call", resource == Governance::Tool::"send_email") when { principal.team == "billing" };
@id("eq-forbid") forbid (principal, action == Governance::Action::"tool_call", resource == Governance::Tool::"send_email") when { context.arguments has amount && context.arguments.amount > 100 };
@id("any-resource") permit (principal, action == Governance::Action::"tool_call", resource) when { context.estimated_cost_micros < 50 };
@id("is-tool") forbid (principal, action, resource is Governance::Tool) when { principal.environment == "frozen" };
@id("provider") permit (principal, action == Governance::Action::"llm_call", resource in Governance::Provider::"openai");
@id("model-eq") forbid (principal, action == Governance::Action::"llm_call", resource == Governance::Model::"openai:o1") unless { principal.team == "research" };
@id("action-list") permit (principal, action in [Governance::Action::"tool_call", Governance::Action::"mcp_tool_call"], resource) when { context.session == "trusted" };
@id("server") @approval("file access") permit (principal, action == Governance::Action::"mcp_tool_call", resource in Governance::McpServer::"files");
@id("any-action") forbid (principal, action, resource) when { context.session_spend_micros > 1000000 };
@id("night") forbid (principal, action == Governance::Action::"tool_call", resource == Governance::Tool::"deploy") when { context.now > datetime("2026-12-03T12:00:00Z") };
@id("overflow") permit (principal, action == Governance::Action::"tool_call", resource == Governance::Tool::"overflow") when { context.estimated_cost_micros * 9223372036854775807 > 0 };
"#;
    const SETTINGS: &str = r#"{"agents": {"billing-bot": {"team": "billing", "environment": "prod"}, "frozen-bot": {"team": "billing", "environment": "frozen"}, "lab": {"team": "research"}}, "arguments": {"amount": "long"}}"#;

    /// Slicing by scope is an optimisation only: over every combination of agent, resource,
    /// session, cost, spend and time, the sliced set decides exactly as the whole set does
    /// (effect, determining policies, approval reason, errors).
    #[test]
    fn sliced_decisions_equal_whole_set_decisions() {
        let sliced = PolicySet::parse(POLICIES, SETTINGS).expect("valid set");
        assert!(sliced.slices.is_some() && sliced.reads_now);
        let mut whole = sliced.clone();
        whole.slices = None;
        let resources = [
            Resource::Tool("send_email"),
            Resource::Tool("deploy"),
            Resource::Tool("overflow"),
            Resource::Tool("other"),
            Resource::Model {
                provider: "openai",
                model: "o1",
            },
            Resource::Model {
                provider: "openai",
                model: "gpt-4o",
            },
            Resource::Model {
                provider: "local",
                model: "llama",
            },
            Resource::McpTool {
                server: "files",
                tool: "read",
            },
            Resource::McpTool {
                server: "web",
                tool: "fetch",
            },
        ];
        let small = serde_json::json!({ "amount": 5 });
        let big = serde_json::json!({ "amount": 500 });
        let before = time::macros::datetime!(2026-12-03 09:00 UTC);
        let after = time::macros::datetime!(2026-12-03 23:00 UTC);
        let mut compared = 0;
        let mut effects = HashSet::new();
        for agent in ["billing-bot", "frozen-bot", "lab", "stranger"] {
            for resource in resources {
                for session in ["s-1", "trusted"] {
                    for arguments in [None, Some(&small), Some(&big)] {
                        for (cost, spend) in [(10, 0), (100, 0), (10, 2_000_000), (2, 5)] {
                            for now in [before, after] {
                                let req = Request {
                                    agent,
                                    resource,
                                    session,
                                    arguments,
                                    estimated_cost_micros: cost,
                                    session_spend_micros: spend,
                                    now,
                                };
                                let (a, b) = (sliced.decide(&req), whole.decide(&req));
                                assert_eq!(a, b, "{req:?}");
                                effects.insert((a.effect, a.errors.is_empty()));
                                compared += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(compared, 4 * 9 * 2 * 3 * 4 * 2);
        // The grid reaches every outcome, errors included.
        for e in [Effect::Permit, Effect::Forbid, Effect::Approval] {
            assert!(effects.contains(&(e, true)), "{e} never decided");
        }
        assert!(
            effects.contains(&(Effect::Forbid, false)),
            "no evaluation error met"
        );
    }

    /// A set whose policies never read `context.now` decides without it; one that does sees it.
    #[test]
    fn the_time_is_in_the_context_when_a_policy_reads_it() {
        let set = PolicySet::parse(
            r#"@id("p") permit (principal, action, resource) when { context.hour_utc >= 0 };"#,
            "",
        )
        .expect("valid set");
        assert!(!set.reads_now);
        let req = Request {
            agent: "a",
            resource: Resource::Tool("t"),
            session: "s",
            arguments: None,
            estimated_cost_micros: 0,
            session_spend_micros: 0,
            now: time::macros::datetime!(2026-12-03 23:00 UTC),
        };
        assert_eq!(set.decide(&req).effect, Effect::Permit);
        let night = PolicySet::parse(POLICIES, SETTINGS).expect("valid set");
        let deploy = Request {
            agent: "billing-bot",
            resource: Resource::Tool("deploy"),
            session: "trusted",
            ..req
        };
        let d = night.decide(&deploy);
        assert_eq!(
            (d.effect, d.determining.as_slice()),
            (Effect::Forbid, &["night".to_owned()][..])
        );
    }
}
