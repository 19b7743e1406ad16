-- The coverage registry: which LLM clients the SDK wraps. One row per distinct (provider,
-- wrapper, model family, host digest), written the first time any SDK handle builds such a
-- client and never changed afterwards (ON CONFLICT DO NOTHING keeps the first registration).
-- The hostname is never stored: `host_digest` is HMAC-SHA256 of the lower-cased hostname under a
-- key derived from the audit secret (HKDF label governance/v1/coverage-host), `hh1_` and 32 hex
-- digits; '' when the client named no host. `model_family` is '' when the client is not bound
-- to a model family.
CREATE TABLE llm_clients (
    provider      text        NOT NULL CHECK (length(provider) BETWEEN 1 AND 128),
    wrapper       text        NOT NULL CHECK (length(wrapper) BETWEEN 1 AND 64),
    model_family  text        NOT NULL DEFAULT '' CHECK (length(model_family) <= 256),
    host_digest   text        NOT NULL DEFAULT '' CHECK (host_digest = '' OR host_digest ~ '^hh1_[0-9a-f]{32}$'),
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, wrapper, model_family, host_digest)
);

REVOKE ALL ON llm_clients FROM PUBLIC;

-- Services register the clients they wrap and the report reads them; nothing updates a row.
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT, INSERT', 'TABLE llm_clients');
