-- pg_trickle catalog: the API and catalog in schema pgtrickle; change buffers in their own schema so
-- that access to captured rows can be granted separately.
CREATE SCHEMA pgtrickle;
CREATE SCHEMA pgtrickle_changes;
COMMENT ON SCHEMA pgtrickle_changes IS 'pg_trickle change buffers: captured source changes and stream-table deltas';

CREATE TABLE pgtrickle.pgt_stream_tables (
    pgt_id               bigserial PRIMARY KEY,
    pgt_relid            oid NOT NULL UNIQUE,
    pgt_schema           name NOT NULL,
    pgt_name             name NOT NULL,
    defining_query       text NOT NULL,
    schedule             interval CHECK (schedule IS NULL OR schedule > interval '0'),
    refresh_mode         text NOT NULL CHECK (refresh_mode IN ('auto', 'differential', 'full')),
    effective_mode       text NOT NULL CHECK (effective_mode IN ('differential', 'full')),
    full_reason          text,
    plan_kind            text NOT NULL CHECK (plan_kind IN ('project', 'aggregate', 'other')),
    status               text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED', 'ERROR')),
    last_batch_seq       bigint NOT NULL DEFAULT 0,
    row_count            bigint NOT NULL DEFAULT 0,
    last_refresh_at      timestamptz,
    next_due_at          timestamptz,
    last_error           text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    needs_reinit         boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pgt_schema, pgt_name)
);
COMMENT ON TABLE pgtrickle.pgt_stream_tables IS 'one row per stream table: definition, schedule, state';

CREATE TABLE pgtrickle.pgt_dependencies (
    pgt_id             bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
    source_relid       oid NOT NULL,
    source_kind        text NOT NULL CHECK (source_kind IN ('table', 'stream_table', 'view')),
    -- Watermark: the source's change rows visible in this snapshot have been consumed ...
    consumed_snapshot  pg_snapshot,
    -- ... and so have this transaction's own rows up to this change id (a refresh that runs in the
    -- transaction that wrote the changes consumes them although its snapshot does not list them).
    consumed_xid       xid8,
    consumed_change_id bigint,
    PRIMARY KEY (pgt_id, source_relid)
);
CREATE INDEX ON pgtrickle.pgt_dependencies (source_relid);
COMMENT ON TABLE pgtrickle.pgt_dependencies IS 'stream table -> source edges, with how far each source''s change buffer was consumed';

CREATE TABLE pgtrickle.pgt_change_buffers (
    source_relid oid PRIMARY KEY,
    buffer_name  name NOT NULL,
    source_kind  text NOT NULL CHECK (source_kind IN ('table', 'stream_table')),
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgtrickle.pgt_change_buffers IS 'change buffers in schema pgtrickle_changes and the relation each captures';

CREATE TABLE pgtrickle.pgt_refresh_history (
    refresh_id    bigserial PRIMARY KEY,
    pgt_id        bigint NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    action        text NOT NULL CHECK (action IN ('differential', 'full', 'reinitialize')),
    status        text NOT NULL CHECK (status IN ('OK', 'NO_CHANGE', 'ERROR')),
    triggered_by  text NOT NULL CHECK (triggered_by IN ('manual', 'scheduler', 'create', 'alter', 'publisher', 'subscriber')),
    batch_seq     bigint,
    batch_kind    text CHECK (batch_kind IN ('delta', 'snapshot')),
    rows_inserted bigint NOT NULL DEFAULT 0,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    error         text
);
CREATE INDEX ON pgtrickle.pgt_refresh_history (pgt_id, refresh_id);
COMMENT ON TABLE pgtrickle.pgt_refresh_history IS 'every refresh attempt: what ran, the batch it produced, or the error';

CREATE VIEW pgtrickle.stream_tables AS
SELECT st.pgt_id,
       format('%I.%I', st.pgt_schema, st.pgt_name) AS name,
       st.status,
       st.refresh_mode,
       st.effective_mode,
       st.full_reason,
       st.schedule,
       st.last_refresh_at,
       st.next_due_at,
       CASE WHEN st.last_refresh_at IS NOT NULL THEN now() - st.last_refresh_at END AS staleness,
       st.row_count AS rows,
       st.last_batch_seq,
       st.consecutive_failures,
       st.last_error,
       st.defining_query
FROM pgtrickle.pgt_stream_tables st;
COMMENT ON VIEW pgtrickle.stream_tables IS 'stream tables: status, last refresh, next due, staleness, rows, last error';

-- Dropping a table that stream tables read, or a stream table's storage, with plain DROP TABLE would
-- leave the catalog pointing at nothing: refuse, and say what to do instead.
CREATE FUNCTION pgtrickle._guard_drop() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE
    dropped record;
    users text;
BEGIN
    IF current_setting('pgtrickle.internal_ddl', true) = 'on' THEN
        RETURN;
    END IF;
    FOR dropped IN SELECT objid, object_identity FROM pg_event_trigger_dropped_objects()
                   WHERE object_type = 'table' LOOP
        IF EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = dropped.objid) THEN
            RAISE EXCEPTION 'cannot drop % with DROP TABLE: it is a stream table', dropped.object_identity
                USING ERRCODE = '2BP01',
                      HINT = format('Use SELECT pgtrickle.drop_stream_table(%L);', dropped.object_identity);
        END IF;
        SELECT string_agg(format('%I.%I', st.pgt_schema, st.pgt_name), ', ') INTO users
        FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id)
        WHERE d.source_relid = dropped.objid;
        IF users IS NOT NULL THEN
            RAISE EXCEPTION 'cannot drop % because stream tables depend on it: %', dropped.object_identity, users
                USING ERRCODE = '2BP01',
                      HINT = 'Drop the dependent stream tables first with pgtrickle.drop_stream_table(name, cascade => true).';
        END IF;
    END LOOP;
END $$;
CREATE EVENT TRIGGER pgtrickle_guard_drop ON sql_drop EXECUTE FUNCTION pgtrickle._guard_drop();

SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_stream_tables', '');
SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_dependencies', '');
SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_change_buffers', '');
SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_refresh_history', '');

-- This cluster's membership of a federation (at most one row).
CREATE TABLE pgtrickle.pgt_federation (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    coordinator_url     text NOT NULL,
    cluster_name        text NOT NULL,
    federation_name     text NOT NULL,
    backend             text NOT NULL,
    bootstrap_servers   text NOT NULL,
    topic_prefix        text NOT NULL,
    registered_at_index bigint NOT NULL,
    -- The server the registration bound the name to (pg_control_system().system_identifier, as text) and the
    -- producer epoch it was handed: every frontier advance presents both, and the coordinators refuse them once
    -- another server took the name over. A physical copy (standby, restored data directory) keeps both; a
    -- logical restore onto another server keeps the row but not the identifier, so its advances are refused
    -- until it takes the name over.
    system_identifier   text NOT NULL,
    producer_epoch      bigint NOT NULL,
    -- The federation's message key (64 hex digits), handed out at registration: every envelope this cluster
    -- sends is authenticated with it, and every envelope it applies must be. As secret as the coordinator token:
    -- the table has no grants beyond its owner (the superuser that created the extension).
    message_key         text NOT NULL,
    -- How this cluster's clients talk to the broker: librdkafka properties under librdkafka's own names
    -- (security.protocol, sasl.mechanism, ssl.ca.location, ...). Never secrets: those go in the file named by
    -- pg_trickle.broker_properties_file, re-read on reload. Set with pgtrickle.set_broker_settings().
    broker_settings     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(broker_settings) = 'object'),
    -- How the publisher creates a stream's topic (a stream uses partition 0 only: its batches stay in order).
    topic_partitions    integer NOT NULL DEFAULT 1 CHECK (topic_partitions BETWEEN 1 AND 10000),
    topic_replication_factor integer NOT NULL DEFAULT 1 CHECK (topic_replication_factor BETWEEN 1 AND 32),
    registered_at       timestamptz NOT NULL DEFAULT now(),
    last_contact        timestamptz,
    last_error          text
);
COMMENT ON TABLE pgtrickle.pgt_federation IS 'the federation this cluster is registered with, and the broker settings it handed out';
SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_federation', '');

-- Stream tables offered to the federation (the coordinator's log holds the truth; this is what this cluster
-- asked for, so the publisher knows what to forward).
CREATE TABLE pgtrickle.pgt_publications (
    pgt_id          bigint PRIMARY KEY REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
    stream_id       text NOT NULL UNIQUE,
    base_seq        bigint NOT NULL,
    published_index bigint NOT NULL,
    published_at    timestamptz NOT NULL DEFAULT now(),
    -- The newest batch the broker acknowledged AND the coordinator's log recorded: change-buffer rows up to it
    -- may be pruned; the publisher sends what follows.
    published_seq   bigint NOT NULL,
    -- The newest batch this server stored as about to be proposed, before each proposal: a log that recorded
    -- more holds another server's history (this server was restored from a backup, or is a promoted standby).
    proposed_seq    bigint NOT NULL DEFAULT 0,
    -- The producer epoch the last proposal was stored under: the log's batches are this server's history only if
    -- they were recorded under it.
    proposed_epoch  bigint NOT NULL DEFAULT 0,
    -- Stream seq = local batch seq + seq_shift. Zero until a takeover restarts the stream: its snapshot batch then
    -- becomes the log's next seq, whatever the local seq counter says.
    seq_shift       bigint NOT NULL DEFAULT 0,
    -- The stream's incarnation at the coordinators (new when it is published after an unpublish): every envelope
    -- carries it, and consumers apply only envelopes of the incarnation the log names.
    incarnation     bigint NOT NULL DEFAULT 0,
    columns         jsonb NOT NULL DEFAULT '[]',
    last_sent_at    timestamptz,
    last_error      text
);
COMMENT ON TABLE pgtrickle.pgt_publications IS 'stream tables this cluster publishes: stream id, seq at publication, log index';
SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_publications', '');

-- Federated stream tables of this cluster: a local stream table over mirrors of published streams.
CREATE TABLE pgtrickle.pgt_federated_tables (
    pgt_id         bigint PRIMARY KEY REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
    table_id       text NOT NULL UNIQUE,
    consistency    text NOT NULL CHECK (consistency IN ('eventual', 'causal')),
    created_index  bigint NOT NULL,
    -- Causal mode: the global time (log index) of the cut the mirrors show.
    applied_cut_at bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE pgtrickle.pgt_federated_tables IS 'federated stream tables: id at the coordinator, consistency, cut shown';
SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_federated_tables', '');

-- One row per mirrored source. applied_seq/applied_offset change only in the transaction that applies a batch.
CREATE TABLE pgtrickle.pgt_federation_sources (
    stream_id         text PRIMARY KEY,
    pgt_id            bigint NOT NULL REFERENCES pgtrickle.pgt_federated_tables ON DELETE CASCADE,
    source_url        text NOT NULL,
    mirror_relid      oid NOT NULL UNIQUE,
    topic             text NOT NULL,
    columns           jsonb NOT NULL,
    applied_seq       bigint NOT NULL DEFAULT 0,
    applied_offset    bigint,
    applied_at        timestamptz,
    committed_seq     bigint NOT NULL DEFAULT 0,
    lag_batches       bigint NOT NULL DEFAULT 0,
    lag_seconds       double precision NOT NULL DEFAULT 0,
    state             text NOT NULL DEFAULT 'bootstrapping',
    detail            text,
    reinit_requests   bigint NOT NULL DEFAULT 0,
    -- The stream incarnation the mirror holds (NULL until the first answer of the log binds it).
    incarnation       bigint,
    -- Messages on the topic refused (not authenticated by the federation's key, undecodable, contradicting).
    refused_messages  bigint NOT NULL DEFAULT 0,
    checked_at        timestamptz
);
COMMENT ON TABLE pgtrickle.pgt_federation_sources IS 'mirrored sources: applied seq and broker position (stored with each apply), lag, state';
SELECT pg_catalog.pg_extension_config_dump('pgtrickle.pgt_federation_sources', '');

-- Every batch applied to a mirror, written in the apply's transaction (the exactly-once evidence).
CREATE TABLE pgtrickle.pgt_apply_log (
    stream_id     text NOT NULL,
    seq           bigint NOT NULL,
    kind          text NOT NULL,
    rows_written  bigint NOT NULL,
    broker_offset bigint NOT NULL,
    cut_at        bigint,
    apply_ms      double precision NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON pgtrickle.pgt_apply_log (stream_id, seq);
COMMENT ON TABLE pgtrickle.pgt_apply_log IS 'batches applied to mirrors, one row each, in the apply transaction';

CREATE VIEW pgtrickle.federation_sources AS
SELECT ft.table_id AS federated_table,
       ft.consistency,
       s.source_url,
       s.stream_id,
       s.mirror_relid::regclass AS mirror,
       s.committed_seq,
       s.applied_seq,
       s.lag_batches,
       s.lag_seconds,
       s.state,
       s.detail,
       s.applied_at,
       s.applied_offset AS broker_offset,
       s.reinit_requests,
       s.incarnation,
       s.refused_messages,
       ft.applied_cut_at AS cut_at,
       s.checked_at
FROM pgtrickle.pgt_federation_sources s
JOIN pgtrickle.pgt_federated_tables ft USING (pgt_id);
COMMENT ON VIEW pgtrickle.federation_sources IS 'per mirrored source: committed frontier, applied seq, lag in batches and seconds, state';
