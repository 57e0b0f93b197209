-- Security audit trail. Never holds PII, passwords, tokens, codes or key material.
CREATE TABLE audit_events (
    id          BIGSERIAL    PRIMARY KEY,
    occurred_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    event       VARCHAR(64)  NOT NULL,
    outcome     VARCHAR(16)  NOT NULL,
    actor       VARCHAR(128),
    subject     VARCHAR(128),
    request_id  VARCHAR(64),
    details     JSONB        NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);
CREATE INDEX audit_events_event_idx ON audit_events (event, occurred_at);
