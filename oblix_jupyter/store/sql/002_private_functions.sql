-- Users reach the store only through functions that check who is calling; the tables are out of their reach.
--
-- Row-level security (001) hides rows, not what the planner knows of them: a user could
-- rebuild another user's private text from EXPLAIN's row estimates, write any column he
-- was granted (a write sharee rewrote the owner's title, counts and extra fields), lock a
-- whole table, and listen to any session's channel. So from here on oblix_users hold no
-- privilege on any table (no SELECT, so no EXPLAIN, no pg_stats row, no LOCK TABLE) and
-- every read and write is one of the SECURITY DEFINER functions below. They run as the
-- schema's owner, with a search_path no user can put objects in, and decide exactly as
-- the policies did, on session_user (which SET ROLE cannot change): a session is read by
-- its owner and those it is shared with; a write share adds messages and nothing else;
-- title, context, model, metadata, counts, schema version, sharing and deletion are the
-- owner's. The policies stay, as a second wall for anyone ever granted a table again.
-- A session function is never inlined into the caller's query, so the planner's
-- estimates of its rows are its declared ones, whatever the tables hold.
--
-- Refusals are errors of our own codes, which the client turns into its own types:
-- OB404 (message: the session id) no such session for this user; OB403 (message: for
-- the user) not theirs to do; OB400 (message: for the user) an argument that cannot be.

REVOKE ALL ON oblix.sessions, oblix.messages, oblix.shares, oblix.bindings, oblix.vectors, oblix.uses FROM oblix_users, PUBLIC;

-- No statistics of what users wrote: the planner does without them (every query is
-- keyed on owner and id, whose statistics stay), and none are left from before.
ALTER TABLE oblix.sessions ALTER COLUMN title SET STATISTICS 0, ALTER COLUMN context SET STATISTICS 0,
    ALTER COLUMN model SET STATISTICS 0, ALTER COLUMN metadata SET STATISTICS 0, ALTER COLUMN extra SET STATISTICS 0,
    ALTER COLUMN title_text SET STATISTICS 0;
ALTER TABLE oblix.messages ALTER COLUMN content SET STATISTICS 0, ALTER COLUMN extra SET STATISTICS 0,
    ALTER COLUMN content_text SET STATISTICS 0, ALTER COLUMN id SET STATISTICS 0;
ALTER TABLE oblix.shares ALTER COLUMN grantee SET STATISTICS 0;
ALTER TABLE oblix.bindings ALTER COLUMN notebook SET STATISTICS 0;
ALTER TABLE oblix.vectors ALTER COLUMN model SET STATISTICS 0, ALTER COLUMN key SET STATISTICS 0,
    ALTER COLUMN payload SET STATISTICS 0;
ALTER TABLE oblix.uses ALTER COLUMN model SET STATISTICS 0, ALTER COLUMN key SET STATISTICS 0;
DELETE FROM pg_catalog.pg_statistic s USING pg_catalog.pg_attribute a
 WHERE a.attrelid = s.starelid AND a.attnum = s.staattnum AND a.attstattarget = 0
   AND a.attrelid IN (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relnamespace = 'oblix'::regnamespace);

-- An open transaction left idle holds its locks; the server ends it after a while
-- (pg_schema.IDLE_IN_TRANSACTION, which add_user sets for users added later). It is a
-- default each user may change, so it cannot bind a determined one: what bounds how
-- long the others wait is the store's own lock_timeout.
DO $$ DECLARE member text; BEGIN
    FOR member IN SELECT r.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.member
                   WHERE m.roleid = 'oblix_users'::regrole AND NOT r.rolsuper LOOP
        EXECUTE format('ALTER ROLE %I IN DATABASE %I SET idle_in_transaction_session_timeout = %L',
                       member, current_database(), '10s');
    END LOOP;
END $$;

-- Helpers of the functions below, in whose search_path they run (users may not call them): no SET
-- clause of their own, so that the planner inlines them.

-- The caller's login as text of the tables' collation: session_user is a name, of collation
-- "C", and compared with it no index on owner or grantee would serve.
CREATE FUNCTION oblix.caller() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT session_user::text COLLATE "default"
$$;

-- Why a change found no row of the caller's: OB404 if the caller cannot read the
-- session, else OB403 naming its owner.
CREATE FUNCTION oblix.refuse(target uuid, action text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE holder text;
BEGIN
    SELECT s.owner INTO holder FROM oblix.sessions s
     WHERE s.id = target AND (s.owner = oblix.caller()
           OR EXISTS (SELECT 1 FROM oblix.shares h WHERE h.session_id = target AND h.grantee = oblix.caller()));
    IF holder IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'OB404', MESSAGE = target::text;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'OB403', MESSAGE = format('Session %s belongs to %s; you cannot %s it.', target, holder, action);
END $$;

-- Whether the caller may read the session: theirs, or shared with them.
CREATE FUNCTION oblix.readable(target uuid) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM oblix.sessions s WHERE s.id = target AND s.owner = oblix.caller())
        OR EXISTS (SELECT 1 FROM oblix.shares h WHERE h.session_id = target AND h.grantee = oblix.caller())
$$;

-- ``fields`` without the names in ``reserved``: what would shadow a column, or the store's own fields, is never stored.
CREATE FUNCTION oblix.own_fields_only(fields jsonb, reserved text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(fields, '{}') - reserved
$$;

-- Appends are announced to each reader on a channel of their own, named from a secret
-- no user can read: any role may LISTEN to any channel, so a channel named after a
-- session (001's) told whoever knew its id, and told a former sharee forever. Who hears
-- is decided at each append, from the shares of that moment.
DROP TRIGGER messages_notify ON oblix.messages;
DROP FUNCTION oblix.notify_append();
CREATE TABLE oblix.secrets (name text PRIMARY KEY, value text NOT NULL);
ALTER TABLE oblix.secrets ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;  -- and no policy: no user row, ever
INSERT INTO oblix.secrets VALUES ('channel_salt', gen_random_uuid()::text || gen_random_uuid()::text);

CREATE FUNCTION oblix.channel_of(reader text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT 'oblix_' || md5(s.value || ':' || reader) FROM oblix.secrets s WHERE s.name = 'channel_salt'
$$;

CREATE FUNCTION oblix.my_channel() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT oblix.channel_of(oblix.caller())
$$;

-- -- sessions ---------------------------------------------------------------------------

CREATE FUNCTION oblix.create_session(target uuid, title text, created timestamptz, updated timestamptz, context jsonb,
                                     model text, metadata jsonb, fields jsonb, version integer,
                                     ids text[], roles text[], contents text[], stamps timestamptz[], extras jsonb[])
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO oblix.sessions (id, owner, title, created_at, updated_at, message_count, context, model, metadata, extra, schema_version)
    VALUES (target, oblix.caller(), title, created, updated, cardinality(ids), context, model, metadata,
            oblix.own_fields_only(fields, ARRAY['id', 'owner', 'title', 'created_at', 'updated_at', 'message_count', 'context',
                                               'model', 'metadata', 'schema_version', 'messages', 'shared_by']),
            version);
    INSERT INTO oblix.messages (session_id, position, id, role, content, timestamp, extra)
    SELECT target, m.position, m.id, m.role, m.content, m.stamp,
           oblix.own_fields_only(m.extra, ARRAY['id', 'role', 'content', 'timestamp'])
      FROM unnest(ids, roles, contents, stamps, extras) WITH ORDINALITY AS m(id, role, content, stamp, extra, position);
END $$;

-- A session as its readers get it: shared_by is its owner when that is not the caller.
CREATE TYPE oblix.session_row AS (id text, title text, created_at timestamptz, updated_at timestamptz, message_count integer,
                                  context jsonb, model text, metadata jsonb, extra jsonb, schema_version integer, shared_by text);

-- Sessions by id as their readers get them, for functions that chose the ids among those the caller may read.
CREATE FUNCTION oblix.sessions_as_read(ids uuid[]) RETURNS SETOF oblix.session_row LANGUAGE sql STABLE AS $$
    SELECT s.id::text, s.title, s.created_at, s.updated_at, s.message_count, s.context, s.model, s.metadata, s.extra,
           s.schema_version, nullif(s.owner, oblix.caller())
      FROM oblix.sessions s WHERE s.id = ANY(ids)
$$;

-- The session, if the caller may read it.
CREATE FUNCTION oblix.read_session(target uuid) RETURNS SETOF oblix.session_row
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM oblix.sessions_as_read(ARRAY[target]) WHERE oblix.readable(target);
END $$;

-- Messages after position ``after`` up to ``upto``, all text: timestamps in shape.format_time's
-- form (UTC, milliseconds cut, not rounded), extra fields as JSON text.
CREATE FUNCTION oblix.read_messages(target uuid, after integer, upto integer)
    RETURNS TABLE (id text, role text, content text, stamp text, extra text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF oblix.readable(target) THEN
        RETURN QUERY
        SELECT m.id, m.role, m.content, to_char(m.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), m.extra::text
          FROM oblix.messages m WHERE m.session_id = target AND m.position > after AND m.position <= upto ORDER BY m.position;
    END IF;
END $$;

CREATE FUNCTION oblix.session_version(target uuid) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.xmin::text FROM oblix.sessions s WHERE s.id = target AND oblix.readable(target)
$$;

-- The caller's sessions, newest first: the newest of their own from the index on (owner,
-- updated_at, id), and the few shared with them.
CREATE FUNCTION oblix.list_sessions(most integer) RETURNS SETOF oblix.session_row
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT r.* FROM oblix.sessions_as_read(ARRAY(
        (SELECT s.id FROM oblix.sessions s WHERE s.owner = oblix.caller() ORDER BY s.updated_at DESC, s.id DESC LIMIT most)
        UNION ALL
        (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = oblix.caller()))) r
     ORDER BY r.updated_at DESC, r.id::uuid DESC LIMIT most;
END $$;

-- Full-text search through the GIN indexes over the caller's sessions: one row per session,
-- its best hit (a title counts double), best first, with that hit's text shortened around
-- its matches (``highlight``: ts_headline's options).
CREATE FUNCTION oblix.search_sessions(query text, most integer, highlight text)
    RETURNS TABLE (id text, title text, created_at timestamptz, updated_at timestamptz, message_count integer, context jsonb,
                   model text, metadata jsonb, extra jsonb, schema_version integer, shared_by text, snippet text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH q AS (SELECT websearch_to_tsquery('english', query) AS q),
    shared AS (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = oblix.caller()),
    hits AS (
        SELECT s.id, ts_rank(s.title_text, q.q) * 2 AS rank, s.title AS text FROM oblix.sessions s, q
         WHERE s.title_text @@ q.q AND (s.owner = oblix.caller() OR s.id IN (SELECT * FROM shared))
        UNION ALL
        SELECT m.session_id, ts_rank(m.content_text, q.q), m.content FROM oblix.messages m, q
         WHERE m.content_text @@ q.q AND (m.owner = oblix.caller() OR m.session_id IN (SELECT * FROM shared))
    ),
    best AS (SELECT DISTINCT ON (h.id) h.id, h.rank, h.text FROM hits h ORDER BY h.id, h.rank DESC),
    chosen AS (
        SELECT b.*, s.updated_at FROM best b JOIN oblix.sessions s ON s.id = b.id ORDER BY b.rank DESC, s.updated_at DESC LIMIT most
    )
    SELECT s.id::text, s.title, s.created_at, s.updated_at, s.message_count, s.context, s.model, s.metadata, s.extra,
           s.schema_version, CASE WHEN s.owner = oblix.caller() THEN NULL ELSE s.owner END,
           ts_headline('english', c.text, q.q, highlight)
      FROM chosen c JOIN oblix.sessions s ON s.id = c.id, q
     ORDER BY c.rank DESC, c.updated_at DESC
$$;

-- Ids of the caller's sessions equal to ``prefix`` (a whole id) or starting with it.
CREATE FUNCTION oblix.matching_sessions(prefix text) RETURNS SETOF text
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF length(prefix) = 36 THEN
        RETURN QUERY SELECT s.id::text FROM oblix.sessions s WHERE s.id = prefix::uuid AND oblix.readable(s.id);
    ELSE
        RETURN QUERY SELECT s.id::text FROM oblix.sessions s
                      WHERE starts_with(s.id::text, prefix) AND oblix.readable(s.id);
    END IF;
END $$;

-- Appends one message at the next position and returns its id (msg_<n>: n is the position
-- unless an imported message has that id, then the next free number). The UPDATE locks
-- the session row until COMMIT: appends queue there and never gap, repeat or reorder.
CREATE FUNCTION oblix.append_message(target uuid, speaker text, body text, said timestamptz, fields jsonb,
                                     changed timestamptz DEFAULT now())
    RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder text;
    place integer;
    number integer;
BEGIN
    UPDATE oblix.sessions s SET message_count = s.message_count + 1, updated_at = greatest(s.updated_at, changed)
     WHERE s.id = target AND (s.owner = oblix.caller() OR EXISTS (
           SELECT 1 FROM oblix.shares h WHERE h.session_id = target AND h.grantee = oblix.caller() AND h.can_write))
    RETURNING s.owner, s.message_count INTO holder, place;
    IF NOT FOUND THEN
        PERFORM oblix.refuse(target, 'add messages to');
    END IF;
    number := place;
    LOOP
        INSERT INTO oblix.messages (session_id, position, id, role, content, timestamp, extra)
        VALUES (target, place, 'msg_' || number, speaker, body, said,
                oblix.own_fields_only(fields, ARRAY['id', 'role', 'content', 'timestamp']))
        ON CONFLICT (session_id, id) DO NOTHING;
        EXIT WHEN FOUND;
        number := number + 1;
    END LOOP;
    PERFORM pg_notify(oblix.channel_of(r.reader), target::text || ' msg_' || number)
       FROM (SELECT holder UNION SELECT h.grantee FROM oblix.shares h WHERE h.session_id = target) r (reader);
    RETURN 'msg_' || number;
END $$;

-- Owner only. ``changes`` holds the columns to set (title, context, model, metadata,
-- schema_version); ``fields`` is merged into extra, without any that would shadow a column.
CREATE FUNCTION oblix.update_session(target uuid, changes jsonb, fields jsonb, changed timestamptz)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE oblix.sessions s SET
        title = CASE WHEN changes ? 'title' THEN changes ->> 'title' ELSE s.title END,
        context = CASE WHEN changes ? 'context' THEN changes -> 'context' ELSE s.context END,
        model = CASE WHEN changes ? 'model' THEN changes ->> 'model' ELSE s.model END,
        metadata = CASE WHEN changes ? 'metadata' THEN changes -> 'metadata' ELSE s.metadata END,
        schema_version = CASE WHEN changes ? 'schema_version' THEN (changes ->> 'schema_version')::integer ELSE s.schema_version END,
        extra = s.extra || oblix.own_fields_only(fields, ARRAY['id', 'owner', 'title', 'created_at', 'updated_at', 'message_count',
                                                                'context', 'model', 'metadata', 'schema_version', 'messages', 'shared_by']),
        updated_at = greatest(s.updated_at, changed)
     WHERE s.id = target AND s.owner = oblix.caller();
    IF NOT FOUND THEN
        PERFORM oblix.refuse(target, 'change');
    END IF;
END $$;

-- Owner only: ``additions`` merged into the metadata (the SDK's update_session_metadata).
CREATE FUNCTION oblix.merge_metadata(target uuid, additions jsonb, changed timestamptz)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE oblix.sessions s SET metadata = coalesce(s.metadata, '{}') || additions, updated_at = greatest(s.updated_at, changed)
     WHERE s.id = target AND s.owner = oblix.caller();
    IF NOT FOUND THEN
        PERFORM oblix.refuse(target, 'change');
    END IF;
END $$;

-- Owner only: the session and everything of it goes (foreign keys, and uses_forget for
-- vectors); false when the caller can read no such session.
CREATE FUNCTION oblix.delete_session(target uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM oblix.sessions s WHERE s.id = target AND s.owner = oblix.caller();
    IF FOUND THEN
        RETURN true;
    END IF;
    IF oblix.readable(target) THEN
        PERFORM oblix.refuse(target, 'delete');
    END IF;
    RETURN false;
END $$;

-- The caller's own sessions not updated since ``cutoff``, newest first; deleted unless ``dry_run``.
CREATE FUNCTION oblix.prune_sessions(cutoff timestamptz, dry_run boolean) RETURNS SETOF text
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH doomed AS (SELECT s.id, s.updated_at FROM oblix.sessions s WHERE s.owner = oblix.caller() AND s.updated_at < cutoff),
    gone AS (DELETE FROM oblix.sessions s WHERE NOT dry_run AND s.id IN (SELECT d.id FROM doomed d))
    SELECT d.id::text FROM doomed d ORDER BY d.updated_at DESC, d.id DESC
$$;

-- -- sharing ----------------------------------------------------------------------------

CREATE FUNCTION oblix.share(target uuid, reader text, writes boolean) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM oblix.sessions s WHERE s.id = target AND s.owner = oblix.caller()) THEN
        PERFORM oblix.refuse(target, 'share');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = reader) THEN
        RAISE EXCEPTION USING ERRCODE = 'OB400', MESSAGE = format('There is no database user %L to share with.', reader);
    END IF;
    IF reader = oblix.caller() THEN
        RAISE EXCEPTION USING ERRCODE = 'OB400', MESSAGE = format('Session %s is yours already.', target);
    END IF;
    INSERT INTO oblix.shares (session_id, grantee, owner, can_write) VALUES (target, reader, oblix.caller(), writes)
    ON CONFLICT (session_id, grantee) DO UPDATE SET can_write = excluded.can_write;
END $$;

CREATE FUNCTION oblix.unshare(target uuid, reader text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM oblix.sessions s WHERE s.id = target AND s.owner = oblix.caller()) THEN
        PERFORM oblix.refuse(target, 'unshare');
    END IF;
    DELETE FROM oblix.shares h WHERE h.session_id = target AND h.grantee = reader;
END $$;

-- Who may read the session and who may write: all of them for its owner, their own share for a sharee.
CREATE FUNCTION oblix.shares(target uuid) RETURNS TABLE (grantee text, can_write boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT h.grantee, h.can_write FROM oblix.shares h
     WHERE h.session_id = target AND (h.owner = oblix.caller() OR h.grantee = oblix.caller()) ORDER BY h.grantee
$$;

CREATE FUNCTION oblix.can_write(target uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM oblix.sessions s WHERE s.id = target AND s.owner = oblix.caller())
        OR EXISTS (SELECT 1 FROM oblix.shares h WHERE h.session_id = target AND h.grantee = oblix.caller() AND h.can_write)
$$;

-- -- notebook bindings (each user's own) ------------------------------------------------

CREATE FUNCTION oblix.bind(notebook text, target uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT oblix.readable(target) THEN
        RAISE EXCEPTION USING ERRCODE = 'OB404', MESSAGE = target::text;
    END IF;
    INSERT INTO oblix.bindings (owner, notebook, session_id) VALUES (oblix.caller(), notebook, target)
    ON CONFLICT ON CONSTRAINT bindings_pkey DO UPDATE SET session_id = excluded.session_id, updated_at = now();
END $$;

CREATE FUNCTION oblix.unbind(notebook text) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM oblix.bindings b WHERE b.owner = oblix.caller() AND b.notebook = unbind.notebook
$$;

-- The session bound to ``notebook``, if the caller can still read it.
CREATE FUNCTION oblix.bound_session(notebook text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT b.session_id::text FROM oblix.bindings b
     WHERE b.owner = oblix.caller() AND b.notebook = bound_session.notebook AND oblix.readable(b.session_id)
$$;

CREATE FUNCTION oblix.bindings() RETURNS TABLE (notebook text, session_id text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT b.notebook, b.session_id::text FROM oblix.bindings b WHERE b.owner = oblix.caller()
$$;

-- -- vectors (each user's own, by content key) ------------------------------------------

CREATE FUNCTION oblix.read_vectors(model text, keys text[]) RETURNS TABLE (key text, payload bytea)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT v.key, v.payload FROM oblix.vectors v
     WHERE v.owner = oblix.caller() AND v.model = read_vectors.model AND v.key = ANY(keys)
$$;

-- Keeps the vectors given (a NULL payload: kept already) and that the session uses them;
-- nothing at all if the caller cannot read the session (gone, or no longer shared).
CREATE FUNCTION oblix.write_vectors(target uuid, model text, keys text[], payloads bytea[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT oblix.readable(target) THEN
        RETURN;
    END IF;
    INSERT INTO oblix.vectors (owner, model, key, payload)
    SELECT oblix.caller(), write_vectors.model, e.key, e.payload FROM unnest(keys, payloads) AS e(key, payload)
     WHERE e.payload IS NOT NULL
    ON CONFLICT DO NOTHING;
    INSERT INTO oblix.uses (owner, session_id, model, key)
    SELECT oblix.caller(), target, write_vectors.model, e.key FROM unnest(keys) AS e(key)
    ON CONFLICT DO NOTHING;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA oblix FROM PUBLIC;
DROP FUNCTION oblix.search_hits(tsquery);  -- search_sessions does its work, and more
GRANT EXECUTE ON FUNCTION
    oblix.my_channel(), oblix.create_session(uuid, text, timestamptz, timestamptz, jsonb, text, jsonb, jsonb, integer, text[], text[],
                                             text[], timestamptz[], jsonb[]),
    oblix.read_session(uuid), oblix.read_messages(uuid, integer, integer), oblix.session_version(uuid), oblix.list_sessions(integer),
    oblix.search_sessions(text, integer, text), oblix.matching_sessions(text),
    oblix.append_message(uuid, text, text, timestamptz, jsonb, timestamptz), oblix.update_session(uuid, jsonb, jsonb, timestamptz),
    oblix.merge_metadata(uuid, jsonb, timestamptz), oblix.delete_session(uuid), oblix.prune_sessions(timestamptz, boolean),
    oblix.share(uuid, text, boolean), oblix.unshare(uuid, text), oblix.shares(uuid), oblix.can_write(uuid),
    oblix.bind(text, uuid), oblix.unbind(text), oblix.bound_session(text), oblix.bindings(),
    oblix.read_vectors(text, text[]), oblix.write_vectors(uuid, text, text[], bytea[])
TO oblix_users;
