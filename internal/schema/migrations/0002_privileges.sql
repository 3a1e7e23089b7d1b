-- pgflow schema, version 2: least privilege.
--
-- The engine's state is written only by its functions. From here on:
--
--   * The public API functions run as their owner (SECURITY DEFINER), so a
--     caller needs EXECUTE on a function and no privilege on the tables
--     behind it. Each has its search_path pinned to pg_catalog, pg_temp
--     (every object of the engine is written schema-qualified as pgflow.*,
--     and every built-in it uses - jsonb, uuid, interval, array and text
--     operators and functions, gen_random_uuid, pg_notify - lives in
--     pg_catalog), so a caller's search_path cannot redirect what they run
--     as the owner. ALTER FUNCTION ... SET adds to a function's settings:
--     the plan settings made in version 1 stay.
--   * The internal helpers (names starting with "_") stay SECURITY INVOKER
--     with no settings of their own: they are called only from the API
--     functions, and then run as the owner with the pinned search_path of
--     the call that reached them. Settings would cost a GUC save and restore
--     per call and would keep the planner from inlining _retry_delay into
--     the statements that use it. Nobody but the owner may call them.
--   * is_valid_slug stays SECURITY INVOKER: it reads nothing (its body was
--     parsed when it was created), and the CHECK constraints of the
--     definition tables call it.
--   * PUBLIC gets nothing: no EXECUTE (PostgreSQL grants it on every new
--     function by default), no privilege on tables, views or the schema.
--   * pgflow.grant_worker and pgflow.grant_client give an existing role what
--     a worker or a client needs (docs/privileges.md). They are SECURITY
--     INVOKER: only whoever may grant on the schema's objects (its owner, or
--     a superuser) can use them.
--
-- A later migration that adds a function must keep this: REVOKE EXECUTE
-- FROM PUBLIC, SECURITY DEFINER and the pinned search_path for API
-- functions, add the function to the grant functions below, and grant it to
-- the roles that already hold the matching privilege (for example every
-- role with EXECUTE on claim_tasks, for a new worker function), so that an
-- upgrade needs no manual step. internal/schema/privileges_test.go checks
-- the catalog for the first two rules.

------------------------------------------------------------------------------
-- The API runs as its owner, with a pinned search_path
------------------------------------------------------------------------------

ALTER FUNCTION pgflow.create_flow(text, int, interval, interval)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.add_step(text, text, text[], text, int, interval, interval, interval)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.update_flow_options(text, int, interval, interval)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.update_step_options(text, text, int, interval, interval, interval)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.start_flows(text, jsonb[], uuid[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.start_flow(text, jsonb, uuid)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.claim_tasks(uuid, text[], text[], int, boolean[], interval, bigint)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.complete_tasks(uuid[], text[], int[], int[], jsonb[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.complete_task(uuid, text, int, int, jsonb)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.fail_tasks(uuid[], text[], int[], int[], text[], boolean[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.fail_task(uuid, text, int, int, text, boolean)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.release_tasks(uuid[], text[], int[], int[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.next_visible_at(text[], text[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.cancel_run(uuid)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.get_run(uuid)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.worker_heartbeat(uuid, text[], text)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgflow.worker_stopped(uuid)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

------------------------------------------------------------------------------
-- Granting roles
------------------------------------------------------------------------------

-- _check_grantee refuses what is not an existing role ("public" would grant
-- to PUBLIC: GRANT reads that name as the keyword even when quoted).
CREATE FUNCTION pgflow._check_grantee(role_name name) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF role_name IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = role_name) THEN
    RAISE EXCEPTION 'role % does not exist', coalesce(quote_ident(role_name), 'NULL')
      USING ERRCODE = 'PF005', HINT = 'create the role first (CREATE ROLE ... LOGIN), then grant';
  END IF;
END $$;

-- grant_worker gives an existing role what a worker needs: sync flow
-- definitions through the definition functions (and read them), claim,
-- complete, fail and release tasks, heartbeat, and see which runs ended.
-- It returns the statements it ran. Idempotent; run it again after an
-- upgrade that adds worker functions.
CREATE FUNCTION pgflow.grant_worker(role_name name) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_stmt text;
BEGIN
  PERFORM pgflow._check_grantee(role_name);
  FOREACH v_stmt IN ARRAY ARRAY[
    'GRANT USAGE ON SCHEMA pgflow TO %I',
    -- Flow definitions: read the stored shapes, change them only through
    -- the functions (which validate every slug and option).
    'GRANT SELECT ON pgflow.flows, pgflow.steps, pgflow.deps TO %I',
    'GRANT EXECUTE ON FUNCTION pgflow.create_flow(text, int, interval, interval),'
      ' pgflow.add_step(text, text, text[], text, int, interval, interval, interval),'
      ' pgflow.update_flow_options(text, int, interval, interval),'
      ' pgflow.update_step_options(text, text, int, interval, interval, interval),'
      ' pgflow.is_valid_slug(text) TO %I',
    -- Tasks.
    'GRANT EXECUTE ON FUNCTION pgflow.claim_tasks(uuid, text[], text[], int, boolean[], interval, bigint),'
      ' pgflow.complete_tasks(uuid[], text[], int[], int[], jsonb[]),'
      ' pgflow.complete_task(uuid, text, int, int, jsonb),'
      ' pgflow.fail_tasks(uuid[], text[], int[], int[], text[], boolean[]),'
      ' pgflow.fail_task(uuid, text, int, int, text, boolean),'
      ' pgflow.release_tasks(uuid[], text[], int[], int[]),'
      ' pgflow.next_visible_at(text[], text[]) TO %I',
    -- Workers.
    'GRANT EXECUTE ON FUNCTION pgflow.worker_heartbeat(uuid, text[], text), pgflow.worker_stopped(uuid) TO %I',
    -- Which runs ended (a missed notification), and the schema version
    -- (a worker refuses a schema it does not know): nothing more of a run.
    'GRANT SELECT (run_id, status) ON pgflow.runs TO %I',
    'GRANT SELECT ON pgflow.schema_migrations TO %I'
  ] LOOP
    v_stmt := format(v_stmt, role_name);
    EXECUTE v_stmt;
    RETURN NEXT v_stmt;
  END LOOP;
END $$;

-- grant_client gives an existing role what a client needs: start runs,
-- read them (get_run, or the runs table), wait for them (LISTEN needs no
-- privilege), and read flow definitions (a typed start checks that its
-- flow is stored as the code has it). With allow_cancel it may also cancel
-- runs. It creates no flows and works on no tasks. It returns the
-- statements it ran. Idempotent.
CREATE FUNCTION pgflow.grant_client(role_name name, allow_cancel boolean DEFAULT false) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_stmts text[] := ARRAY[
    'GRANT USAGE ON SCHEMA pgflow TO %I',
    'GRANT SELECT ON pgflow.flows, pgflow.steps, pgflow.deps TO %I',
    'GRANT EXECUTE ON FUNCTION pgflow.start_flows(text, jsonb[], uuid[]),'
      ' pgflow.start_flow(text, jsonb, uuid),'
      ' pgflow.get_run(uuid),'
      ' pgflow.is_valid_slug(text) TO %I',
    -- The runs themselves: exactly what get_run returns of them.
    'GRANT SELECT ON pgflow.runs TO %I'];
  v_stmt text;
BEGIN
  PERFORM pgflow._check_grantee(role_name);
  IF allow_cancel IS NULL THEN
    RAISE EXCEPTION 'grant_client: allow_cancel must not be NULL' USING ERRCODE = 'PF005';
  END IF;
  IF allow_cancel THEN
    v_stmts := v_stmts || 'GRANT EXECUTE ON FUNCTION pgflow.cancel_run(uuid) TO %I'::text;
  END IF;
  FOREACH v_stmt IN ARRAY v_stmts LOOP
    v_stmt := format(v_stmt, role_name);
    EXECUTE v_stmt;
    RETURN NEXT v_stmt;
  END LOOP;
END $$;

------------------------------------------------------------------------------
-- Nothing for PUBLIC
------------------------------------------------------------------------------

REVOKE ALL ON SCHEMA pgflow FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA pgflow FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgflow FROM PUBLIC;
