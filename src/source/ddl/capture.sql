-- pgbridge DDL capture (source.capture_ddl): an event trigger that writes
-- every schema change of a table into the WAL as a transactional logical
-- decoding message (prefix 'pgbridge.ddl'), in the transaction that made
-- it, so that it reaches the sinks in commit order with the rows around it.
-- Each message carries the table's definition before and after the change;
-- the definitions are kept in pgbridge.ddl_tables between changes.
-- Run as a superuser (event triggers need one). Safe to run again.
CREATE SCHEMA IF NOT EXISTS pgbridge;

CREATE TABLE IF NOT EXISTS pgbridge.ddl_tables (
    relid oid PRIMARY KEY,
    definition jsonb NOT NULL
);

CREATE OR REPLACE FUNCTION pgbridge.table_definition(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT jsonb_build_object(
    'oid', c.oid,
    'schema', n.nspname,
    'name', c.relname,
    'kind', c.relkind,
    'columns', COALESCE((
        SELECT jsonb_agg(jsonb_build_object(
            'attnum', a.attnum,
            'name', a.attname,
            'type', format_type(a.atttypid, a.atttypmod),
            'type_oid', a.atttypid,
            'typmod', a.atttypmod,
            'type_name', t.typname,
            'type_schema', tn.nspname,
            'not_null', a.attnotnull,
            'default', pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum)
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        JOIN pg_namespace tn ON tn.oid = t.typnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb),
    'indexes', COALESCE((
        SELECT jsonb_agg(jsonb_build_object(
            'name', ic.relname,
            'definition', pg_get_indexdef(i.indexrelid),
            'constraint', EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = c.oid))
            ORDER BY ic.relname)
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = c.oid), '[]'::jsonb),
    'partitions', COALESCE((
        SELECT jsonb_agg(pn.nspname || '.' || pc.relname ORDER BY pn.nspname, pc.relname)
        FROM pg_inherits h JOIN pg_class pc ON pc.oid = h.inhrelid
        JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        WHERE h.inhparent = c.oid), '[]'::jsonb))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
$fn$;

-- Records the definition of table rel and, when it changed, emits the
-- message. A new table is recorded without a message (the sinks learn it
-- from its Relation message); a new partition refreshes its parent's
-- record, as creating it moves no rows.
CREATE OR REPLACE FUNCTION pgbridge.emit_ddl(rel oid, tag text, identity text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    old_def jsonb;
    new_def jsonb;
    parent oid;
BEGIN
    SELECT definition INTO old_def FROM pgbridge.ddl_tables WHERE relid = rel;
    new_def := pgbridge.table_definition(rel);
    IF new_def IS NULL THEN
        DELETE FROM pgbridge.ddl_tables WHERE relid = rel;
        RETURN;
    END IF;
    IF old_def IS NOT DISTINCT FROM new_def THEN
        RETURN;
    END IF;
    INSERT INTO pgbridge.ddl_tables (relid, definition) VALUES (rel, new_def)
        ON CONFLICT (relid) DO UPDATE SET definition = EXCLUDED.definition;
    IF old_def IS NULL THEN
        FOR parent IN SELECT inhparent FROM pg_inherits WHERE inhrelid = rel LOOP
            UPDATE pgbridge.ddl_tables SET definition = pgbridge.table_definition(parent)
                WHERE relid = parent;
        END LOOP;
        RETURN;
    END IF;
    PERFORM pg_logical_emit_message(true, 'pgbridge.ddl', jsonb_build_object(
        'version', 1,
        'command_tag', tag,
        'object_identity', identity,
        'statement', current_query(),
        'old', old_def,
        'new', new_def)::text);
END
$fn$;

CREATE OR REPLACE FUNCTION pgbridge.capture_ddl_commands(tg_event text, tg_tag text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r record;
    rel oid;
    seen oid[] := '{}';
BEGIN
    IF tg_event = 'sql_drop' THEN
        -- A dropped index is gone from pg_index: its table is found in the
        -- recorded definitions. A dropped table's record goes.
        FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
            IF r.object_type = 'table' THEN
                DELETE FROM pgbridge.ddl_tables WHERE relid = r.objid;
            ELSIF r.object_type = 'index' THEN
                FOR rel IN SELECT relid FROM pgbridge.ddl_tables
                    WHERE definition->>'schema' = r.schema_name
                      AND definition->'indexes' @> jsonb_build_array(jsonb_build_object('name', r.object_name))
                LOOP
                    IF NOT rel = ANY(seen) THEN
                        seen := seen || rel;
                        PERFORM pgbridge.emit_ddl(rel, tg_tag, r.object_identity);
                    END IF;
                END LOOP;
            END IF;
        END LOOP;
        RETURN;
    END IF;
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
        WHERE classid = 'pg_catalog.pg_class'::regclass LOOP
        SELECT CASE WHEN c.relkind IN ('r', 'p') THEN c.oid
                    WHEN c.relkind IN ('i', 'I') THEN (SELECT indrelid FROM pg_index WHERE indexrelid = c.oid)
               END INTO rel
          FROM pg_class c WHERE c.oid = r.objid;
        IF rel IS NULL OR rel = ANY(seen) THEN
            CONTINUE;
        END IF;
        seen := seen || rel;
        PERFORM pgbridge.emit_ddl(rel, r.command_tag, r.object_identity);
    END LOOP;
END
$fn$;

-- A failure here must not fail the user's DDL: it is reported as a
-- WARNING to the client and in the server log, and the change is not
-- captured (the sinks then see only what Relation messages show).
CREATE OR REPLACE FUNCTION pgbridge.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM pgbridge.capture_ddl_commands(TG_EVENT, TG_TAG);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgbridge: the schema change (%) was not captured for replication: % (SQLSTATE %)',
        TG_TAG, SQLERRM, SQLSTATE;
END
$fn$;

-- The tables that exist now, as they are now.
INSERT INTO pgbridge.ddl_tables (relid, definition)
SELECT c.oid, pgbridge.table_definition(c.oid)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgbridge')
   AND n.nspname NOT LIKE 'pg_toast%'
ON CONFLICT (relid) DO NOTHING;

DROP EVENT TRIGGER IF EXISTS pgbridge_capture_ddl;
CREATE EVENT TRIGGER pgbridge_capture_ddl ON ddl_command_end
    EXECUTE FUNCTION pgbridge.capture_ddl();
DROP EVENT TRIGGER IF EXISTS pgbridge_capture_ddl_drop;
CREATE EVENT TRIGGER pgbridge_capture_ddl_drop ON sql_drop
    EXECUTE FUNCTION pgbridge.capture_ddl();
