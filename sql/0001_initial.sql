-- collabd Config DB, schema version 1.
--
-- Applied by `collabctl migrate` (the text is embedded in the binary). The
-- migrator runs this file and its schema_migrations row in one transaction,
-- so a failure leaves the database as it was. Rust-side validation in
-- src/configdb/ is the first line of defence; the CHECKs below are the
-- backstop for anything that writes here directly.

-- One row per collabd instance: its settings (written by collabctl) and its
-- heartbeat (written by the instance, read by collab-dispatcher).
CREATE TABLE instance (
    name                  text        PRIMARY KEY
                          CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    cwa_url               text        NOT NULL
                          CHECK (cwa_url ~* '^https?://[^/?#@[:space:]]+(/[^?#[:space:]]*)?$'),
    auth_mode             text        NOT NULL DEFAULT 'iwa-then-forms'
                          CHECK (auth_mode IN ('iwa-then-forms', 'forms', 'iwa')),
    -- NULL: no configured maximum (admission then stops at http_max_connections).
    max_sessions          integer     NULL CHECK (max_sessions > 0),
    -- NULL: never sign out idle sessions to make room at the maximum.
    idle_timeout_ms       bigint      NULL CHECK (idle_timeout_ms > 0),
    -- NULL: no inactivity reaper.
    inactivity_timeout_ms bigint      NULL CHECK (inactivity_timeout_ms > 0),
    http_max_connections  integer     NOT NULL DEFAULT 1000
                          CHECK (http_max_connections > 0),
    password_caching      boolean     NOT NULL DEFAULT false,
    -- Dispatcher view, written by the instance's heartbeat.
    listen_addr           text        NULL,
    heartbeat_at          timestamptz NULL,
    sessions_in_use       integer     NOT NULL DEFAULT 0 CHECK (sessions_in_use >= 0),
    session_limit         integer     NULL CHECK (session_limit >= 0),
    healthy               boolean     NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Users who may be given devices. Logins compare case-insensitively, as
-- Windows does; the stored spelling is the one first given.
CREATE TABLE app_user (
    login      text        PRIMARY KEY
               CHECK (login ~ '^([A-Za-z0-9][A-Za-z0-9._-]{0,14}\\[^\\@[:space:][:cntrl:]]{1,104}|[^\\@[:space:][:cntrl:]]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252})$'),
    sip_uri    text        NOT NULL
               CHECK (sip_uri ~* '^sip:[^@[:space:][:cntrl:]]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}$'),
    -- Permission to use the collaboration client (status 302 when false).
    im_enabled boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX app_user_login_ci ON app_user (lower(login));
CREATE UNIQUE INDEX app_user_sip_uri_ci ON app_user (lower(sip_uri));

-- Provisioned devices. The PIN is a 32-bit value (8 hex digits on the wire
-- and in collabctl); the transport key is the device's 256-bit secret.
CREATE TABLE device (
    pin           bigint      PRIMARY KEY CHECK (pin BETWEEN 0 AND 4294967295),
    login         text        NOT NULL
                  REFERENCES app_user (login) ON UPDATE CASCADE ON DELETE RESTRICT,
    transport_key bytea       NOT NULL CHECK (octet_length(transport_key) = 32),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_login ON device (login);

-- The live session registry (and its recent history): one row per session,
-- written by the owning instance on state changes.
CREATE TABLE session (
    id             bigserial   PRIMARY KEY,
    instance       text        NOT NULL REFERENCES instance (name) ON UPDATE CASCADE,
    login          text        NOT NULL,
    pin            bigint      NOT NULL CHECK (pin BETWEEN 0 AND 4294967295),
    state          text        NOT NULL DEFAULT 'active'
                   CHECK (state IN ('active', 'ended')),
    coverage       text        NOT NULL DEFAULT 'in'
                   CHECK (coverage IN ('in', 'out', 'dormant')),
    last_status_at timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz NULL,
    end_reason     text        NULL,
    CHECK ((state = 'ended') = (ended_at IS NOT NULL))
);
CREATE INDEX session_active_pin ON session (pin) WHERE state = 'active';
CREATE INDEX session_active_instance ON session (instance) WHERE state = 'active';

-- What happened, for operators: logins admitted and refused with their
-- reason, evictions, logouts, and every change collabctl makes. Never a
-- password or a key.
CREATE TABLE audit_event (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    instance text        NULL,
    login    text        NULL,
    pin      bigint      NULL CHECK (pin BETWEEN 0 AND 4294967295),
    event    text        NOT NULL CHECK (event ~ '^[a-z][a-z0-9_]{0,63}$'),
    reason   text        NULL
);
CREATE INDEX audit_event_at ON audit_event (at);
