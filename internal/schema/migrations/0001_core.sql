-- pgflow core schema, version 1.
--
-- Locking (every function follows these rules, so concurrent calls do not
-- deadlock):
--   * Waits on run rows and step states happen in one order: run rows
--     (sorted by run_id), then step states (sorted by run_id, step_slug).
--     Whoever locks a run row also locks every step state of that run in
--     the same sorted sweep, so what it does to the run afterwards
--     (cascading, failing, cancelling) needs no new lock on them.
--   * A completion batch that cannot finish any step (the common case in a
--     fanout) updates its tasks and then decrements its step states in the
--     same statement, so it holds its task rows while it waits for a step
--     state. Whoever holds a run row or a step state therefore never waits
--     for a task row of another report: it only updates the tasks of its
--     own report (which at most a claim holds for a moment, and claims never
--     wait), and when it ends a run it takes the run's other tasks with
--     SKIP LOCKED (a task locked by someone else is being claimed or
--     reported right now, and that party finds the run ended).
--   * Two reports of the same task at the same moment can still deadlock
--     each other; Postgres then aborts one, and its retry is fenced out as
--     the duplicate it is.
--   * A completion batch that might finish a step locks its run rows first
--     (see complete_tasks).
--
-- Statements that look tasks up by keys given as arrays join only those
-- arrays to the task table; what they need of runs and steps they read in
-- per-row sub-selects. Otherwise the planner may reach the tasks through a
-- join with runs by run_id alone and scan a whole fanout per looked-up task.
--
-- A task is reached by its key where the key is known. Fences on a task's
-- status are written "(t.status = 'started') IS TRUE" there: the planner
-- cannot match that to the partial index of started tasks, which holds every
-- task in flight and would otherwise be scanned once per looked-up task.
--
-- All functions expect READ COMMITTED: each statement of a PL/pgSQL function
-- then sees the rows committed before it started, which the completion path
-- relies on after it has taken its locks.

------------------------------------------------------------------------------
-- Definitions
------------------------------------------------------------------------------

-- _new_run_id returns a version 7 UUID: 48 bits of Unix time in
-- milliseconds, then random bits. Runs started together get neighbouring
-- ids, so the run, step state and task indexes (all led by run_id) grow at
-- their right edge instead of taking inserts on random pages.
CREATE FUNCTION pgflow._new_run_id() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
RETURN encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
         PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
         FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;

CREATE FUNCTION pgflow.is_valid_slug(slug text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN slug IS NOT NULL AND slug ~ '^[a-z][a-z0-9_]{0,62}$';

CREATE TABLE pgflow.flows (
  flow_slug        text PRIMARY KEY CHECK (pgflow.is_valid_slug(flow_slug)),
  opt_max_attempts int NOT NULL CHECK (opt_max_attempts >= 1),
  opt_base_delay   interval NOT NULL CHECK (opt_base_delay >= interval '0'),
  opt_timeout      interval NOT NULL CHECK (opt_timeout > interval '0'),
  created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgflow.steps (
  flow_slug        text NOT NULL REFERENCES pgflow.flows (flow_slug),
  step_slug        text NOT NULL CHECK (pgflow.is_valid_slug(step_slug)),
  step_type        text NOT NULL CHECK (step_type IN ('single', 'fanout')),
  step_index       int NOT NULL,
  deps_count       int NOT NULL CHECK (deps_count >= 0),
  -- NULL options inherit the flow's.
  opt_max_attempts int CHECK (opt_max_attempts >= 1),
  opt_base_delay   interval CHECK (opt_base_delay >= interval '0'),
  opt_timeout      interval CHECK (opt_timeout > interval '0'),
  opt_start_delay  interval CHECK (opt_start_delay >= interval '0'),
  created_at       timestamptz NOT NULL DEFAULT now(),
  -- The step's number in the task key and the queue indexes of step_tasks
  -- (see there).
  step_id          int GENERATED ALWAYS AS IDENTITY UNIQUE,
  PRIMARY KEY (flow_slug, step_slug),
  UNIQUE (flow_slug, step_index),
  CHECK (step_type = 'single' OR deps_count <= 1)
);

CREATE TABLE pgflow.deps (
  flow_slug  text NOT NULL,
  step_slug  text NOT NULL,
  dep_slug   text NOT NULL,
  dep_index  int NOT NULL,
  PRIMARY KEY (flow_slug, step_slug, dep_slug),
  UNIQUE (flow_slug, step_slug, dep_index),
  FOREIGN KEY (flow_slug, step_slug) REFERENCES pgflow.steps (flow_slug, step_slug),
  FOREIGN KEY (flow_slug, dep_slug) REFERENCES pgflow.steps (flow_slug, step_slug),
  CHECK (dep_slug <> step_slug)
);
CREATE INDEX deps_dependents_idx ON pgflow.deps (flow_slug, dep_slug);

-- Effective options of every step: step options override flow options.
CREATE VIEW pgflow.step_options AS
SELECT s.flow_slug,
       s.step_slug,
       s.step_type,
       s.step_index,
       s.deps_count,
       coalesce(s.opt_max_attempts, f.opt_max_attempts) AS max_attempts,
       coalesce(s.opt_base_delay, f.opt_base_delay)     AS base_delay,
       coalesce(s.opt_timeout, f.opt_timeout)           AS timeout,
       coalesce(s.opt_start_delay, interval '0')        AS start_delay,
       s.step_id
FROM pgflow.steps s
JOIN pgflow.flows f ON f.flow_slug = s.flow_slug;

------------------------------------------------------------------------------
-- Runtime state. Only the functions below write these tables; they carry no
-- foreign keys so that the hot path does no referential checks per row, and
-- no CHECK constraints: Postgres prepares a table's CHECK expressions anew
-- for every statement that writes it, which cost about a seventh of the
-- time of a one-task claim or completion. The status values each table
-- may hold are listed beside it (the tests check every table against them).
------------------------------------------------------------------------------

CREATE TABLE pgflow.runs (
  run_id           uuid PRIMARY KEY,
  flow_slug        text NOT NULL,
  status           text NOT NULL,  -- started, completed, failed, cancelled
  input            jsonb NOT NULL,
  output           json,  -- see step_states.output
  remaining_steps  int NOT NULL,
  error_step       text,
  error_task_index int,
  error_message    text,
  started_at       timestamptz NOT NULL DEFAULT now(),
  ended_at         timestamptz
) WITH (fillfactor = 70);  -- room for the updates of a run's progress to stay on its page (HOT)
CREATE INDEX runs_flow_slug_idx ON pgflow.runs (flow_slug, started_at);

CREATE TABLE pgflow.step_states (
  run_id          uuid NOT NULL,
  step_slug       text NOT NULL,
  flow_slug       text NOT NULL,
  status          text NOT NULL,  -- created, started, completed, failed, cancelled
  remaining_deps  int NOT NULL,
  total_tasks     int,  -- set when the step starts
  remaining_tasks int,
  -- Step and run outputs are kept as json (text): they are only ever put
  -- together into larger values and handed out whole, and a jsonb value
  -- is rebuilt element by element each time (a 100,000-element output took
  -- a quarter of a second to wrap into a run output, another to gather).
  -- Objects of outputs (a run's, a task's dependencies') are written as
  -- text the way jsonb prints them (keys shorter first, then bytewise;
  -- ": " and ", "), so that they read the same as jsonb would; a helper
  -- function would be planned anew in every statement that calls it.
  output          json,
  error_message   text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  started_at      timestamptz,
  ended_at        timestamptz,
  PRIMARY KEY (run_id, step_slug)
) WITH (fillfactor = 80);

-- The task table is the queue. A queued task is claimable once visible_at has
-- passed; a started task is leased until visible_at (its timeout plus a grace,
-- plus the retry delay when another attempt remains), after which the next
-- claim takes it over as a new attempt.
CREATE TABLE pgflow.step_tasks (
  run_id        uuid NOT NULL,
  step_slug     text NOT NULL,
  task_index    int NOT NULL,
  step_id       int NOT NULL,  -- the step's steps.step_id: the queue indexes' key
  attempt       int NOT NULL DEFAULT 0,  -- number of the latest claim; fences results
  failures      int NOT NULL DEFAULT 0,  -- failed attempts so far
  flow_slug     text NOT NULL,
  status        text NOT NULL,  -- queued, started, completed, failed, cancelled
  visible_at    timestamptz NOT NULL,
  item          jsonb,  -- a fanout task's own element
  output        jsonb,  -- a fanout task's output (a single step's output lives in step_states)
  error_message text,
  worker_id     uuid,
  queued_at     timestamptz NOT NULL DEFAULT now(),
  started_at    timestamptz,
  ended_at      timestamptz,
  -- Keyed by the step's number rather than its slug: every task enters the
  -- key once when created and again with each claim and completion, and
  -- comparisons end on integers. Reports name steps by slug; the number is
  -- looked up in steps, once per step of a batch of fanout tasks, and the
  -- task is then reached with its whole key from one relation (with the
  -- number from one and the index from another, the planner may look
  -- tasks up by part of the key and filter the rest).
  PRIMARY KEY (run_id, step_id, task_index)
) WITH (fillfactor = 70);
-- The queue indexes are keyed by the step's number rather than its slugs:
-- every task enters both (queued when created, leased when claimed), and
-- fixed-width keys are compared faster than two text columns (claims of
-- 100 tasks: about 6% less backend CPU, a fifth less for the bare update).
CREATE INDEX step_tasks_queued_idx ON pgflow.step_tasks (step_id, visible_at)
  WHERE status = 'queued';
CREATE INDEX step_tasks_leased_idx ON pgflow.step_tasks (step_id, visible_at)
  WHERE status = 'started';

-- Large inputs and outputs (a wide fanout's input, its gathered output and
-- the run output holding it) are compressed with lz4 where the server
-- supports it: compressing 10 MB of JSON took pglz 85 ms and lz4 35 ms,
-- once for the input at the start and twice for the outputs at the end.
DO $$
BEGIN
  ALTER TABLE pgflow.runs ALTER COLUMN input SET COMPRESSION lz4, ALTER COLUMN output SET COMPRESSION lz4;
  ALTER TABLE pgflow.step_states ALTER COLUMN output SET COMPRESSION lz4;
  ALTER TABLE pgflow.step_tasks ALTER COLUMN item SET COMPRESSION lz4, ALTER COLUMN output SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
  NULL; -- built without lz4: the default (pglz) stays
END $$;

-- claim_turns numbers claims, so that the steps of a claim take turns at
-- coming first (see claim_tasks).
CREATE SEQUENCE pgflow.claim_turns AS bigint CYCLE;

CREATE TABLE pgflow.workers (
  worker_id         uuid PRIMARY KEY,
  flow_slugs        text[] NOT NULL DEFAULT '{}',
  hostname          text,
  started_at        timestamptz NOT NULL DEFAULT now(),
  last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
  stopped_at        timestamptz
);

------------------------------------------------------------------------------
-- Validation helpers
------------------------------------------------------------------------------

-- Error codes (SQLSTATE class PF) let clients branch on the failure:
--   PF001 unknown flow      PF002 invalid input      PF003 invalid definition
--   PF004 unknown run       PF005 invalid argument
CREATE FUNCTION pgflow._check_slug(kind text, slug text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF NOT pgflow.is_valid_slug(slug) THEN
    RAISE EXCEPTION 'invalid % slug %: slugs match ^[a-z][a-z0-9_]{0,62}$', kind, coalesce(to_jsonb(slug)::text, 'NULL')
      USING ERRCODE = 'PF003';
  END IF;
END $$;

CREATE FUNCTION pgflow._check_options(owner text, max_attempts int, base_delay interval, timeout interval, start_delay interval)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF max_attempts < 1 THEN
    RAISE EXCEPTION '%: max_attempts must be >= 1, got %', owner, max_attempts USING ERRCODE = 'PF003';
  END IF;
  IF base_delay < interval '0' THEN
    RAISE EXCEPTION '%: base_delay must not be negative, got %', owner, base_delay USING ERRCODE = 'PF003';
  END IF;
  IF timeout <= interval '0' THEN
    RAISE EXCEPTION '%: timeout must be positive, got %', owner, timeout USING ERRCODE = 'PF003';
  END IF;
  IF start_delay < interval '0' THEN
    RAISE EXCEPTION '%: start_delay must not be negative, got %', owner, start_delay USING ERRCODE = 'PF003';
  END IF;
END $$;

-- Retry delay after the n-th failed attempt: base_delay * 2^(n-1).
CREATE FUNCTION pgflow._retry_delay(base_delay interval, failed_attempt int) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN base_delay * power(2, least(greatest(failed_attempt - 1, 0), 30));

------------------------------------------------------------------------------
-- Defining flows
------------------------------------------------------------------------------

-- create_flow creates a flow. Calling it again with the same options is a
-- no-op; with other options it is an error (update_flow_options changes them).
CREATE FUNCTION pgflow.create_flow(
  flow_slug    text,
  max_attempts int DEFAULT 3,
  base_delay   interval DEFAULT '1 second',
  timeout      interval DEFAULT '5 minutes'
) RETURNS pgflow.flows
LANGUAGE plpgsql AS $$
DECLARE
  v_flow pgflow.flows;
BEGIN
  PERFORM pgflow._check_slug('flow', create_flow.flow_slug);
  PERFORM pgflow._check_options(format('flow %s', to_jsonb(create_flow.flow_slug)),
    create_flow.max_attempts, create_flow.base_delay, create_flow.timeout, NULL);
  IF create_flow.max_attempts IS NULL OR create_flow.base_delay IS NULL OR create_flow.timeout IS NULL THEN
    RAISE EXCEPTION 'flow %: max_attempts, base_delay and timeout must not be NULL', to_jsonb(create_flow.flow_slug)
      USING ERRCODE = 'PF003';
  END IF;

  INSERT INTO pgflow.flows AS f (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout)
  VALUES (create_flow.flow_slug, create_flow.max_attempts, create_flow.base_delay, create_flow.timeout)
  ON CONFLICT ON CONSTRAINT flows_pkey DO NOTHING
  RETURNING f.* INTO v_flow;
  IF FOUND THEN
    RETURN v_flow;
  END IF;

  SELECT f.* INTO v_flow FROM pgflow.flows f WHERE f.flow_slug = create_flow.flow_slug;
  IF (v_flow.opt_max_attempts, v_flow.opt_base_delay, v_flow.opt_timeout)
     IS DISTINCT FROM (create_flow.max_attempts, create_flow.base_delay, create_flow.timeout) THEN
    RAISE EXCEPTION 'flow % already exists with other options (max_attempts %, base_delay %, timeout %)',
      to_jsonb(create_flow.flow_slug), v_flow.opt_max_attempts, v_flow.opt_base_delay, v_flow.opt_timeout
      USING ERRCODE = 'PF003', HINT = 'use pgflow.update_flow_options to change options';
  END IF;
  RETURN v_flow;
END $$;

-- add_step adds a step to a flow. Dependencies must already exist, so steps
-- are added in topological order and a cycle cannot be expressed. Adding the
-- same step again is a no-op; a different step under the same slug is an
-- error. Steps cannot be added to a flow that has runs: a new shape needs a
-- new flow slug.
CREATE FUNCTION pgflow.add_step(
  flow_slug    text,
  step_slug    text,
  deps         text[] DEFAULT '{}',
  step_type    text DEFAULT 'single',
  max_attempts int DEFAULT NULL,
  base_delay   interval DEFAULT NULL,
  timeout      interval DEFAULT NULL,
  start_delay  interval DEFAULT NULL
) RETURNS pgflow.steps
LANGUAGE plpgsql AS $$
DECLARE
  v_deps    text[] := coalesce(add_step.deps, '{}');
  v_owner   text := format('step %s of flow %s', to_jsonb(add_step.step_slug), to_jsonb(add_step.flow_slug));
  v_step    pgflow.steps;
  v_old     text[];
  v_missing text;
  v_dep     text;
BEGIN
  PERFORM pgflow._check_slug('flow', add_step.flow_slug);
  PERFORM pgflow._check_slug('step', add_step.step_slug);
  FOREACH v_dep IN ARRAY v_deps LOOP
    PERFORM pgflow._check_slug('dependency', v_dep);
  END LOOP;
  IF add_step.step_type IS NULL OR add_step.step_type NOT IN ('single', 'fanout') THEN
    RAISE EXCEPTION '%: step_type must be ''single'' or ''fanout'', got %', v_owner, coalesce(to_jsonb(add_step.step_type)::text, 'NULL')
      USING ERRCODE = 'PF003';
  END IF;
  PERFORM pgflow._check_options(v_owner, add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay);
  IF add_step.step_slug = ANY (v_deps) THEN
    RAISE EXCEPTION '%: a step cannot depend on itself', v_owner USING ERRCODE = 'PF003';
  END IF;
  IF (SELECT count(DISTINCT d) FROM unnest(v_deps) d) <> cardinality(v_deps) THEN
    RAISE EXCEPTION '%: dependencies % list a step twice', v_owner, to_jsonb(v_deps) USING ERRCODE = 'PF003';
  END IF;
  IF add_step.step_type = 'fanout' AND cardinality(v_deps) > 1 THEN
    RAISE EXCEPTION '%: fanout steps must have exactly one dependency (or none, to map over the flow input), got %',
      v_owner, to_jsonb(v_deps) USING ERRCODE = 'PF003';
  END IF;

  -- Serialises definition changes of one flow against each other and against
  -- start_flow (which takes FOR KEY SHARE).
  PERFORM 1 FROM pgflow.flows f WHERE f.flow_slug = add_step.flow_slug FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'flow % does not exist', to_jsonb(add_step.flow_slug) USING ERRCODE = 'PF001';
  END IF;

  SELECT s.* INTO v_step FROM pgflow.steps s
  WHERE s.flow_slug = add_step.flow_slug AND s.step_slug = add_step.step_slug;
  IF FOUND THEN
    SELECT coalesce(array_agg(d.dep_slug ORDER BY d.dep_index), '{}') INTO v_old
    FROM pgflow.deps d WHERE d.flow_slug = add_step.flow_slug AND d.step_slug = add_step.step_slug;
    IF v_old = v_deps AND v_step.step_type = add_step.step_type
       AND (v_step.opt_max_attempts, v_step.opt_base_delay, v_step.opt_timeout, v_step.opt_start_delay)
           IS NOT DISTINCT FROM (add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay) THEN
      RETURN v_step;
    END IF;
    RAISE EXCEPTION '% already exists with another definition (type %, deps %)', v_owner, v_step.step_type, to_jsonb(v_old)
      USING ERRCODE = 'PF003';
  END IF;

  SELECT d INTO v_missing FROM unnest(v_deps) d
  WHERE NOT EXISTS (SELECT 1 FROM pgflow.steps s WHERE s.flow_slug = add_step.flow_slug AND s.step_slug = d)
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION '%: unknown dependency % (add dependencies first)', v_owner, to_jsonb(v_missing) USING ERRCODE = 'PF003';
  END IF;

  IF EXISTS (SELECT 1 FROM pgflow.runs r WHERE r.flow_slug = add_step.flow_slug) THEN
    RAISE EXCEPTION '%: flow % already has runs; a new shape needs a new flow slug', v_owner, to_jsonb(add_step.flow_slug)
      USING ERRCODE = 'PF003';
  END IF;

  INSERT INTO pgflow.steps AS s (flow_slug, step_slug, step_type, step_index, deps_count,
                                 opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay)
  SELECT add_step.flow_slug, add_step.step_slug, add_step.step_type,
         (SELECT count(*) FROM pgflow.steps x WHERE x.flow_slug = add_step.flow_slug),
         cardinality(v_deps), add_step.max_attempts, add_step.base_delay, add_step.timeout, add_step.start_delay
  RETURNING s.* INTO v_step;

  INSERT INTO pgflow.deps (flow_slug, step_slug, dep_slug, dep_index)
  SELECT add_step.flow_slug, add_step.step_slug, d.slug, (d.ord - 1)::int
  FROM unnest(v_deps) WITH ORDINALITY AS d(slug, ord);

  RETURN v_step;
END $$;

-- update_flow_options changes a flow's options; running tasks pick them up
-- at their next claim or failure.
CREATE FUNCTION pgflow.update_flow_options(
  flow_slug    text,
  max_attempts int,
  base_delay   interval,
  timeout      interval
) RETURNS pgflow.flows
LANGUAGE plpgsql AS $$
DECLARE
  v_flow pgflow.flows;
BEGIN
  PERFORM pgflow._check_options(format('flow %s', to_jsonb(update_flow_options.flow_slug)),
    update_flow_options.max_attempts, update_flow_options.base_delay, update_flow_options.timeout, NULL);
  UPDATE pgflow.flows f
  SET opt_max_attempts = coalesce(update_flow_options.max_attempts, f.opt_max_attempts),
      opt_base_delay   = coalesce(update_flow_options.base_delay, f.opt_base_delay),
      opt_timeout      = coalesce(update_flow_options.timeout, f.opt_timeout)
  WHERE f.flow_slug = update_flow_options.flow_slug
  RETURNING f.* INTO v_flow;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'flow % does not exist', to_jsonb(update_flow_options.flow_slug) USING ERRCODE = 'PF001';
  END IF;
  RETURN v_flow;
END $$;

-- update_step_options sets a step's own options (NULL: inherit the flow's).
CREATE FUNCTION pgflow.update_step_options(
  flow_slug    text,
  step_slug    text,
  max_attempts int,
  base_delay   interval,
  timeout      interval,
  start_delay  interval
) RETURNS pgflow.steps
LANGUAGE plpgsql AS $$
DECLARE
  v_step pgflow.steps;
BEGIN
  PERFORM pgflow._check_options(
    format('step %s of flow %s', to_jsonb(update_step_options.step_slug), to_jsonb(update_step_options.flow_slug)),
    update_step_options.max_attempts, update_step_options.base_delay, update_step_options.timeout,
    update_step_options.start_delay);
  UPDATE pgflow.steps s
  SET opt_max_attempts = update_step_options.max_attempts,
      opt_base_delay   = update_step_options.base_delay,
      opt_timeout      = update_step_options.timeout,
      opt_start_delay  = update_step_options.start_delay
  WHERE s.flow_slug = update_step_options.flow_slug AND s.step_slug = update_step_options.step_slug
  RETURNING s.* INTO v_step;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'step % of flow % does not exist', to_jsonb(update_step_options.step_slug),
      to_jsonb(update_step_options.flow_slug) USING ERRCODE = 'PF001';
  END IF;
  RETURN v_step;
END $$;

------------------------------------------------------------------------------
-- Run progression (internal)
------------------------------------------------------------------------------

-- _end_run ends a started run as failed or cancelled. For a failure, the
-- failing step is marked failed; every other unfinished step and task is
-- cancelled, so late results are fenced out and nothing of the run stays
-- claimable. The caller holds the run row lock. Returns false when the run
-- had already ended.
CREATE FUNCTION pgflow._end_run(p_run_id uuid, p_status text, p_step_slug text, p_task_index int, p_message text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE pgflow.runs r
  SET status = p_status, ended_at = now(),
      error_step = p_step_slug, error_task_index = p_task_index, error_message = p_message
  WHERE r.run_id = p_run_id AND r.status = 'started';
  IF NOT FOUND THEN
    RETURN false;
  END IF;

  UPDATE pgflow.step_states ss
  SET status = CASE WHEN ss.step_slug = p_step_slug THEN 'failed' ELSE 'cancelled' END,
      error_message = CASE WHEN ss.step_slug = p_step_slug THEN p_message END,
      ended_at = now()
  FROM (SELECT x.step_slug FROM pgflow.step_states x
        WHERE x.run_id = p_run_id AND x.status IN ('created', 'started')
        ORDER BY x.step_slug FOR UPDATE) l
  WHERE ss.run_id = p_run_id AND ss.step_slug = l.step_slug;

  -- Tasks locked by someone else are being claimed or reported right now;
  -- whoever holds them finds the run ended and fences itself out.
  UPDATE pgflow.step_tasks t
  SET status = 'cancelled', ended_at = now()
  WHERE t.ctid = ANY (ARRAY(
    SELECT x.ctid FROM pgflow.step_tasks x
    WHERE x.run_id = p_run_id AND x.status IN ('queued', 'started')
    FOR UPDATE SKIP LOCKED));

  PERFORM pg_notify('pgflow_runs', json_build_object('status', p_status, 'run_ids', json_build_array(p_run_id))::text);
  RETURN true;
END $$;

-- _advance moves runs forward. It takes steps that have just completed and
-- steps that have just become ready, and repeats until nothing changes:
-- completed steps release their dependents (and count down their run),
-- ready steps start (queueing their tasks), and a fanout over an empty array
-- completes at once and feeds the next round. Runs with no steps left
-- complete at the end. The caller holds the run rows of every run involved.
-- p_release false says that no step in p_done_steps has dependents.
CREATE FUNCTION pgflow._advance(
  p_done_runs uuid[], p_done_steps text[],
  p_ready_runs uuid[], p_ready_steps text[],
  p_release boolean DEFAULT true
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v_done_runs   uuid[] := coalesce(p_done_runs, '{}');
  v_done_steps  text[] := coalesce(p_done_steps, '{}');
  v_ready_runs  uuid[] := coalesce(p_ready_runs, '{}');
  v_ready_steps text[] := coalesce(p_ready_steps, '{}');
  v_completed   uuid[] := '{}';  -- a run id per step completed
  v_new_runs    uuid[];
  v_new_steps   text[];
  v_flows       text[];
  v_bad_runs    uuid[];
  v_bad_steps   text[];
  v_bad_msgs    text[];
  v_i           int;
  v_release     boolean := coalesce(p_release, true);
BEGIN
  LOOP
    IF cardinality(v_done_runs) > 0 THEN
      v_completed := v_completed || v_done_runs;
    END IF;
    IF cardinality(v_done_runs) > 0 AND v_release THEN
      -- Release the dependents of the completed steps. A single step with
      -- no dependency left starts right here (its one task needs nothing
      -- but its key); other steps with none left are ready, and start below.
      -- (complete_tasks releases for single steps with the same statement.)
      WITH done AS (
        SELECT x.run_id, x.step_slug FROM unnest(v_done_runs, v_done_steps) AS x(run_id, step_slug)
      ), dependents AS (
        SELECT ss.run_id, d.step_slug, count(*)::int AS n,
               bool_and(s.step_type = 'single'
                        AND (SELECT r.status FROM pgflow.runs r WHERE r.run_id = ss.run_id) = 'started') AS single,
               min(coalesce(s.opt_start_delay, interval '0')) AS start_delay, min(s.step_id) AS step_id
        FROM done
        JOIN pgflow.step_states ss ON ss.run_id = done.run_id AND ss.step_slug = done.step_slug
        JOIN pgflow.deps d ON d.flow_slug = ss.flow_slug AND d.dep_slug = ss.step_slug
        JOIN pgflow.steps s ON s.flow_slug = d.flow_slug AND s.step_slug = d.step_slug
        GROUP BY ss.run_id, d.step_slug
      ), released AS (
        UPDATE pgflow.step_states ss
        SET remaining_deps = ss.remaining_deps - dep.n,
            status = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN 'started' ELSE ss.status END,
            total_tasks = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN 1 ELSE ss.total_tasks END,
            remaining_tasks = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN 1 ELSE ss.remaining_tasks END,
            started_at = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN now() ELSE ss.started_at END
        FROM dependents dep
        WHERE ss.run_id = dep.run_id AND ss.step_slug = dep.step_slug AND ss.status = 'created'
        RETURNING ss.run_id, ss.step_slug, ss.flow_slug, ss.status, ss.remaining_deps, dep.start_delay, dep.step_id
      ), queued AS (
        INSERT INTO pgflow.step_tasks (run_id, step_slug, task_index, step_id, flow_slug, status, visible_at, item)
        SELECT released.run_id, released.step_slug, 0, released.step_id, released.flow_slug, 'queued', now() + released.start_delay, NULL
        FROM released WHERE released.status = 'started'
      )
      SELECT coalesce(array_agg(released.run_id) FILTER (WHERE released.status = 'created'), '{}'),
             coalesce(array_agg(released.step_slug) FILTER (WHERE released.status = 'created'), '{}'),
             coalesce(array_agg(DISTINCT released.flow_slug) FILTER (WHERE released.status = 'started'), '{}')
      INTO v_new_runs, v_new_steps, v_flows
      FROM released WHERE released.remaining_deps = 0;

      PERFORM pg_notify('pgflow_tasks', f) FROM unnest(v_flows) AS f;
      v_ready_runs := v_ready_runs || v_new_runs;
      v_ready_steps := v_ready_steps || v_new_steps;
    END IF;

    EXIT WHEN cardinality(v_ready_runs) = 0;

    -- Start the ready steps: one task for a single step, one task per
    -- element (each storing its own element) for a fanout step. A fanout
    -- over an empty array completes at once with []; a fanout whose source
    -- is not a JSON array is reported, and fails its run below (the
    -- producing step keeps its output for inspection).
    WITH ready AS (
      -- A fanout's source: the run input (jsonb) for a root fanout, else
      -- its dependency's output (json).
      SELECT ss.run_id, ss.step_slug, ss.flow_slug, s.step_type, s.step_id, coalesce(s.opt_start_delay, interval '0') AS start_delay,
             CASE WHEN s.step_type = 'fanout' AND s.deps_count = 0 THEN r.input END AS input_source,
             CASE WHEN s.step_type = 'fanout' AND s.deps_count > 0 THEN
               (SELECT dss.output FROM pgflow.deps d
                JOIN pgflow.step_states dss ON dss.run_id = ss.run_id AND dss.step_slug = d.dep_slug
                WHERE d.flow_slug = ss.flow_slug AND d.step_slug = ss.step_slug)
             END AS output_source
      FROM unnest(v_ready_runs, v_ready_steps) AS x(run_id, step_slug)
      JOIN pgflow.step_states ss ON ss.run_id = x.run_id AND ss.step_slug = x.step_slug
      JOIN pgflow.runs r ON r.run_id = ss.run_id
      JOIN pgflow.steps s ON s.flow_slug = ss.flow_slug AND s.step_slug = ss.step_slug
      WHERE ss.status = 'created' AND r.status = 'started'
    ), typed AS (
      SELECT ready.*, coalesce(jsonb_typeof(ready.input_source), json_typeof(ready.output_source)) AS source_type
      FROM ready
    ), sized AS MATERIALIZED (
      SELECT typed.*,
             CASE WHEN typed.step_type = 'single' THEN 1
                  WHEN typed.source_type <> 'array' THEN NULL
                  WHEN typed.input_source IS NOT NULL THEN jsonb_array_length(typed.input_source)
                  ELSE json_array_length(typed.output_source)
             END AS n  -- NULL: a fanout over something that is not an array
      FROM typed
    ), started AS (
      UPDATE pgflow.step_states ss
      SET status = CASE WHEN sized.n = 0 THEN 'completed' ELSE 'started' END,
          total_tasks = sized.n,
          remaining_tasks = sized.n,
          output = CASE WHEN sized.n = 0 THEN '[]'::json END,
          started_at = now(),
          ended_at = CASE WHEN sized.n = 0 THEN now() END
      FROM sized
      WHERE ss.run_id = sized.run_id AND ss.step_slug = sized.step_slug AND sized.n IS NOT NULL
      RETURNING ss.run_id, ss.step_slug, ss.flow_slug, ss.status
    ), queued AS (
      INSERT INTO pgflow.step_tasks (run_id, step_slug, task_index, step_id, flow_slug, status, visible_at, item)
      SELECT sized.run_id, sized.step_slug, 0, sized.step_id, sized.flow_slug, 'queued', now() + sized.start_delay, NULL
      FROM sized WHERE sized.step_type = 'single'
      UNION ALL
      SELECT sized.run_id, sized.step_slug, (e.ord - 1)::int, sized.step_id, sized.flow_slug, 'queued', now() + sized.start_delay, e.value
      FROM sized CROSS JOIN LATERAL jsonb_array_elements(sized.input_source) WITH ORDINALITY AS e(value, ord)
      WHERE sized.step_type = 'fanout' AND sized.n > 0 AND sized.input_source IS NOT NULL
      UNION ALL
      SELECT sized.run_id, sized.step_slug, (e.ord - 1)::int, sized.step_id, sized.flow_slug, 'queued', now() + sized.start_delay, e.value::jsonb
      FROM sized CROSS JOIN LATERAL json_array_elements(sized.output_source) WITH ORDINALITY AS e(value, ord)
      WHERE sized.step_type = 'fanout' AND sized.n > 0 AND sized.output_source IS NOT NULL
    ), bad AS (
      SELECT sized.run_id, sized.step_slug,
             CASE WHEN d.dep_slug IS NULL
               THEN format('fanout step %s expects the flow input to be a JSON array, got %s',
                           to_jsonb(sized.step_slug), coalesce(sized.source_type, 'null'))
               ELSE format('fanout step %s expects dependency %s to output a JSON array, got %s',
                           to_jsonb(sized.step_slug), to_jsonb(d.dep_slug), coalesce(sized.source_type, 'null'))
             END AS message
      FROM sized
      LEFT JOIN pgflow.deps d ON d.flow_slug = sized.flow_slug AND d.step_slug = sized.step_slug
      WHERE sized.n IS NULL
    )
    SELECT coalesce(array_agg(started.run_id) FILTER (WHERE started.status = 'completed'), '{}'),
           coalesce(array_agg(started.step_slug) FILTER (WHERE started.status = 'completed'), '{}'),
           coalesce(array_agg(DISTINCT started.flow_slug) FILTER (WHERE started.status = 'started'), '{}'),
           (SELECT array_agg(bad.run_id ORDER BY bad.run_id, bad.step_slug) FROM bad),
           (SELECT array_agg(bad.step_slug ORDER BY bad.run_id, bad.step_slug) FROM bad),
           (SELECT array_agg(bad.message ORDER BY bad.run_id, bad.step_slug) FROM bad)
    INTO v_done_runs, v_done_steps, v_flows, v_bad_runs, v_bad_steps, v_bad_msgs
    FROM started;

    FOR v_i IN 1 .. coalesce(cardinality(v_bad_runs), 0) LOOP
      PERFORM pgflow._end_run(v_bad_runs[v_i], 'failed', v_bad_steps[v_i], NULL, v_bad_msgs[v_i]);
    END LOOP;

    -- One notification per flow per statement (Postgres also folds
    -- duplicates within a transaction).
    PERFORM pg_notify('pgflow_tasks', f) FROM unnest(v_flows) AS f;

    v_ready_runs := '{}';
    v_ready_steps := '{}';
    v_release := true;
  END LOOP;

  -- Count down each run's remaining steps, once per run, and complete the
  -- runs with none left; the run output is an object keyed by leaf step slug.
  WITH counts AS (
    SELECT x.run_id, count(*)::int AS n FROM unnest(v_completed) AS x(run_id) GROUP BY x.run_id
  ), updated AS (
    UPDATE pgflow.runs r
    SET remaining_steps = r.remaining_steps - c.n,
        status = CASE WHEN r.status = 'started' AND r.remaining_steps = c.n THEN 'completed' ELSE r.status END,
        ended_at = CASE WHEN r.status = 'started' AND r.remaining_steps = c.n THEN now() ELSE r.ended_at END,
        output = CASE WHEN r.status = 'started' AND r.remaining_steps = c.n THEN
                   (SELECT ('{' || coalesce(string_agg(to_json(ss.step_slug)::text || ': ' || coalesce(ss.output::text, 'null'), ', '
                                                      ORDER BY octet_length(ss.step_slug), ss.step_slug COLLATE "C"), '') || '}')::json
                    FROM pgflow.step_states ss
                    WHERE ss.run_id = r.run_id
                      AND NOT EXISTS (SELECT 1 FROM pgflow.deps d
                                      WHERE d.flow_slug = ss.flow_slug AND d.dep_slug = ss.step_slug))
                 ELSE r.output END
    FROM counts c
    WHERE r.run_id = c.run_id
    RETURNING r.run_id, r.status
  ), chunks AS (
    SELECT updated.run_id, (row_number() OVER () - 1) / 100 AS chunk
    FROM updated WHERE updated.status = 'completed'
  )
  SELECT coalesce(array_agg(json_build_object('status', 'completed', 'run_ids', c.ids)::text), '{}')
  INTO v_flows
  FROM (SELECT json_agg(chunks.run_id) AS ids FROM chunks GROUP BY chunks.chunk) c;

  PERFORM pg_notify('pgflow_runs', p) FROM unnest(v_flows) AS p;
END $$;

------------------------------------------------------------------------------
-- Starting runs
------------------------------------------------------------------------------

-- start_flows starts one run per input (run_ids, when given, names them) and
-- returns the run ids in input order. A flow with a root fanout step rejects
-- an input that is not a JSON array, and then no run is created.
CREATE FUNCTION pgflow.start_flows(flow_slug text, inputs jsonb[], run_ids uuid[] DEFAULT NULL)
RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
  v_steps   int;
  v_root    text;
  v_bad     record;
  v_ids     uuid[];
  v_ready_runs  uuid[];
  v_ready_steps text[];
  v_queued      boolean;
BEGIN
  IF inputs IS NULL OR cardinality(inputs) = 0 THEN
    RETURN '{}';
  END IF;
  IF run_ids IS NOT NULL AND cardinality(run_ids) <> cardinality(inputs) THEN
    RAISE EXCEPTION 'start_flows: % run ids for % inputs', cardinality(run_ids), cardinality(inputs)
      USING ERRCODE = 'PF005';
  END IF;

  -- The flow is kept from changing while the runs start; its steps are
  -- read in the next statement, which sees a definition change that
  -- committed while this one waited for the lock.
  PERFORM 1 FROM pgflow.flows f WHERE f.flow_slug = start_flows.flow_slug FOR KEY SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'flow % does not exist', coalesce(to_jsonb(start_flows.flow_slug)::text, 'NULL')
      USING ERRCODE = 'PF001';
  END IF;
  -- The number of steps, and the root fanout step if there is one.
  SELECT count(*),
         (array_agg(s.step_slug ORDER BY s.step_index) FILTER (WHERE s.step_type = 'fanout' AND s.deps_count = 0))[1]
  INTO v_steps, v_root
  FROM pgflow.steps s WHERE s.flow_slug = start_flows.flow_slug;
  IF v_steps = 0 THEN
    RAISE EXCEPTION 'flow % has no steps', to_jsonb(start_flows.flow_slug) USING ERRCODE = 'PF003';
  END IF;

  IF v_root IS NOT NULL THEN
    SELECT i.ord, jsonb_typeof(coalesce(i.input, 'null')) AS got INTO v_bad
    FROM unnest(inputs) WITH ORDINALITY AS i(input, ord)
    WHERE jsonb_typeof(coalesce(i.input, 'null')) <> 'array'
    ORDER BY i.ord LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'flow % maps its input with root fanout step %: the input must be a JSON array, got %',
        to_jsonb(start_flows.flow_slug), to_jsonb(v_root), v_bad.got
        || CASE WHEN cardinality(inputs) > 1 THEN format(' (input %s of %s)', v_bad.ord, cardinality(inputs)) ELSE '' END
        USING ERRCODE = 'PF002';
    END IF;
  END IF;

  -- One statement creates the runs and their step states, and starts the
  -- root steps at once: a single root step gets its task, a root fanout one
  -- task per element of the input. A root fanout over [] is left to
  -- _advance below (it completes at once and may cascade).
  WITH ids AS MATERIALIZED (
    SELECT coalesce(start_flows.run_ids[i.ord], pgflow._new_run_id()) AS run_id, coalesce(i.input, 'null') AS input, i.ord
    FROM unnest(inputs) WITH ORDINALITY AS i(input, ord)
  ), new_runs AS (
    INSERT INTO pgflow.runs (run_id, flow_slug, status, input, remaining_steps)
    SELECT ids.run_id, start_flows.flow_slug, 'started', ids.input, v_steps FROM ids
  ), states AS MATERIALIZED (
    SELECT ids.run_id, ids.input, s.step_slug, s.step_id, s.step_type, s.deps_count,
           coalesce(s.opt_start_delay, interval '0') AS start_delay,
           CASE WHEN s.deps_count > 0 THEN NULL
                WHEN s.step_type = 'single' THEN 1
                ELSE jsonb_array_length(ids.input) END AS n
    FROM ids CROSS JOIN pgflow.steps s
    WHERE s.flow_slug = start_flows.flow_slug
  ), new_states AS (
    INSERT INTO pgflow.step_states (run_id, step_slug, flow_slug, status, remaining_deps, total_tasks, remaining_tasks, started_at)
    SELECT states.run_id, states.step_slug, start_flows.flow_slug,
           CASE WHEN states.n > 0 THEN 'started' ELSE 'created' END, states.deps_count,
           CASE WHEN states.n > 0 THEN states.n END, CASE WHEN states.n > 0 THEN states.n END,
           CASE WHEN states.n > 0 THEN now() END
    FROM states
  ), new_tasks AS (
    INSERT INTO pgflow.step_tasks (run_id, step_slug, task_index, step_id, flow_slug, status, visible_at, item)
    SELECT states.run_id, states.step_slug, 0, states.step_id, start_flows.flow_slug, 'queued', now() + states.start_delay, NULL
    FROM states WHERE states.n = 1 AND states.step_type = 'single'
    UNION ALL
    SELECT states.run_id, states.step_slug, (e.ord - 1)::int, states.step_id, start_flows.flow_slug, 'queued', now() + states.start_delay, e.value
    FROM states CROSS JOIN LATERAL jsonb_array_elements(states.input) WITH ORDINALITY AS e(value, ord)
    WHERE states.step_type = 'fanout' AND states.n > 0
  )
  SELECT (SELECT array_agg(ids.run_id ORDER BY ids.ord) FROM ids),
         (SELECT array_agg(states.run_id) FROM states WHERE states.n = 0),
         (SELECT array_agg(states.step_slug) FROM states WHERE states.n = 0),
         (SELECT bool_or(states.n > 0) FROM states)
  INTO v_ids, v_ready_runs, v_ready_steps, v_queued;

  IF v_queued THEN
    PERFORM pg_notify('pgflow_tasks', start_flows.flow_slug);
  END IF;
  IF v_ready_runs IS NOT NULL THEN
    PERFORM pgflow._advance(NULL, NULL, v_ready_runs, v_ready_steps);
  END IF;
  RETURN v_ids;
END $$;

-- start_flow starts one run and returns its id.
CREATE FUNCTION pgflow.start_flow(flow_slug text, input jsonb DEFAULT '{}', run_id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE sql
RETURN (pgflow.start_flows(flow_slug, ARRAY[coalesce(input, 'null'::jsonb)],
        CASE WHEN run_id IS NULL THEN NULL ELSE ARRAY[run_id] END))[1];

------------------------------------------------------------------------------
-- Working on tasks
------------------------------------------------------------------------------

-- _task_step_ids returns the number of the step of each task named by its
-- run and step slug (run_ids[i], step_slugs[i]), for looking the tasks up by
-- their key; NULL where the run or step is unknown. The number comes from
-- the step's definition, as when the task was created.
CREATE FUNCTION pgflow._task_step_ids(p_run_ids uuid[], p_step_slugs text[]) RETURNS int[]
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT ARRAY(
    SELECT (SELECT s.step_id FROM pgflow.runs r JOIN pgflow.steps s ON s.flow_slug = r.flow_slug
            WHERE r.run_id = u.run_id AND s.step_slug = u.step_slug)
    FROM unnest(p_run_ids, p_step_slugs) WITH ORDINALITY AS u(run_id, step_slug, ord)
    ORDER BY u.ord);
END;

-- fail_tasks records failed attempts (fenced: a result for any attempt but a
-- task's latest started one changes nothing). An attempt with retries left
-- requeues its task after base_delay * 2^(n-1); a permanent error or the last
-- attempt fails the step and the run. Returns how many results applied.
CREATE FUNCTION pgflow.fail_tasks(
  run_ids        uuid[],
  step_slugs     text[],
  task_indexes   int[],
  attempts       int[],
  error_messages text[],
  permanent      boolean[] DEFAULT NULL
) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
  v_final_runs   uuid[];
  v_final_steps  text[];
  v_final_idx    int[];
  v_failed_runs  uuid[];
  v_failed_steps text[];
  v_failed_idx   int[];
  v_failed_msgs  text[];
  v_applied      int;
  v_flows        text[];
  v_row          record;
  v_step_ids     int[];
BEGIN
  IF coalesce(cardinality(run_ids), 0) = 0 THEN
    RETURN 0;
  END IF;
  IF cardinality(step_slugs) IS DISTINCT FROM cardinality(run_ids)
     OR cardinality(task_indexes) IS DISTINCT FROM cardinality(run_ids)
     OR cardinality(attempts) IS DISTINCT FROM cardinality(run_ids)
     OR cardinality(error_messages) IS DISTINCT FROM cardinality(run_ids)
     OR (permanent IS NOT NULL AND cardinality(permanent) <> cardinality(run_ids)) THEN
    RAISE EXCEPTION 'fail_tasks: argument arrays differ in length' USING ERRCODE = 'PF005';
  END IF;
  v_step_ids := pgflow._task_step_ids(run_ids, step_slugs);

  -- Which failures end their task for good is known before taking any lock:
  -- a permanent error, or the last allowed attempt. (If the task moves on
  -- meanwhile, this attempt is stale and fenced out below.)
  SELECT array_agg(f.run_id), array_agg(f.step_slug), array_agg(f.task_index)
  INTO v_final_runs, v_final_steps, v_final_idx
  FROM unnest(run_ids, step_slugs, v_step_ids, task_indexes, attempts, coalesce(permanent, '{}'))
       AS f(run_id, step_slug, step_id, task_index, attempt, permanent)
  CROSS JOIN LATERAL (
    SELECT x.flow_slug, x.failures FROM pgflow.step_tasks x
    WHERE x.run_id = f.run_id AND x.step_id = f.step_id AND x.task_index = f.task_index
      AND x.attempt = f.attempt AND (x.status = 'started') IS TRUE) t
  JOIN pgflow.step_options so ON so.flow_slug = t.flow_slug AND so.step_slug = f.step_slug
  WHERE coalesce(f.permanent, false) OR t.failures + 1 >= so.max_attempts;

  -- The runs that will fail, then in one sorted sweep every step state of
  -- those runs and of the batch's steps. The keys are gathered first and
  -- joined to the step states: written as one condition with OR, the
  -- planner walks every step state and filters.
  IF v_final_runs IS NOT NULL THEN
    PERFORM 1 FROM pgflow.runs r WHERE r.run_id = ANY (v_final_runs) ORDER BY r.run_id FOR UPDATE;
  END IF;
  PERFORM 1
  FROM (SELECT DISTINCT k.run_id, k.step_slug
        FROM (SELECT x.run_id, x.step_slug FROM unnest(run_ids, step_slugs) AS x(run_id, step_slug)
              UNION ALL
              SELECT s.run_id, s.step_slug FROM pgflow.step_states s WHERE s.run_id = ANY (v_final_runs)) k) keys
  JOIN pgflow.step_states ss ON ss.run_id = keys.run_id AND ss.step_slug = keys.step_slug
  ORDER BY ss.run_id, ss.step_slug
  FOR UPDATE OF ss;

  -- Fail the final attempts, requeue the others after their backoff; a task
  -- whose run has ended meanwhile is cancelled instead.
  WITH f AS (
    SELECT f.*, (k.task_index IS NOT NULL) AS final
    FROM unnest(run_ids, step_slugs, v_step_ids, task_indexes, attempts, error_messages)
         AS f(run_id, step_slug, step_id, task_index, attempt, message)
    LEFT JOIN unnest(v_final_runs, v_final_steps, v_final_idx) AS k(run_id, step_slug, task_index)
      ON k.run_id = f.run_id AND k.step_slug = f.step_slug AND k.task_index = f.task_index
  ), updated AS (
    UPDATE pgflow.step_tasks t
    SET (status, failures, error_message, ended_at, worker_id, visible_at) = (
          SELECT CASE WHEN r.status IS DISTINCT FROM 'started' THEN 'cancelled'
                      WHEN f.final THEN 'failed' ELSE 'queued' END,
                 t.failures + 1,
                 f.message,
                 CASE WHEN f.final OR r.status IS DISTINCT FROM 'started' THEN now() END,
                 CASE WHEN f.final THEN t.worker_id END,
                 CASE WHEN f.final THEN t.visible_at
                      ELSE now() + pgflow._retry_delay(coalesce(so.base_delay, interval '1 second'), t.failures + 1) END
          FROM (SELECT) one
          LEFT JOIN pgflow.runs r ON r.run_id = t.run_id
          LEFT JOIN pgflow.step_options so ON so.flow_slug = t.flow_slug AND so.step_slug = t.step_slug)
    FROM f
    WHERE t.run_id = f.run_id AND t.step_id = f.step_id AND t.task_index = f.task_index
      AND t.attempt = f.attempt AND (t.status = 'started') IS TRUE
    RETURNING t.run_id, t.step_slug, t.task_index, t.status, t.error_message, t.flow_slug
  )
  SELECT count(*) FILTER (WHERE u.status <> 'cancelled')::int,
         array_agg(u.run_id ORDER BY u.run_id, u.step_slug, u.task_index) FILTER (WHERE u.status = 'failed'),
         array_agg(u.step_slug ORDER BY u.run_id, u.step_slug, u.task_index) FILTER (WHERE u.status = 'failed'),
         array_agg(u.task_index ORDER BY u.run_id, u.step_slug, u.task_index) FILTER (WHERE u.status = 'failed'),
         array_agg(u.error_message ORDER BY u.run_id, u.step_slug, u.task_index) FILTER (WHERE u.status = 'failed'),
         coalesce(array_agg(DISTINCT u.flow_slug) FILTER (WHERE u.status = 'queued'), '{}')
  INTO v_applied, v_failed_runs, v_failed_steps, v_failed_idx, v_failed_msgs, v_flows
  FROM updated u;

  -- Each run with a failed task fails, naming its first failed task.
  FOR v_row IN
    SELECT DISTINCT ON (x.run_id) x.run_id, x.step_slug, x.task_index, x.message
    FROM unnest(v_failed_runs, v_failed_steps, v_failed_idx, v_failed_msgs) WITH ORDINALITY
         AS x(run_id, step_slug, task_index, message, ord)
    ORDER BY x.run_id, x.ord
  LOOP
    PERFORM pgflow._end_run(v_row.run_id, 'failed', v_row.step_slug, v_row.task_index, v_row.message);
  END LOOP;

  PERFORM pg_notify('pgflow_tasks', f) FROM unnest(v_flows) AS f;
  RETURN v_applied;
END $$;

-- fail_task records one failed attempt; returns the task's status afterwards
-- ('queued' when it will be retried, 'failed'), or NULL when the result was
-- fenced out (stale attempt, task already finished, run ended).
CREATE FUNCTION pgflow.fail_task(
  run_id        uuid,
  step_slug     text,
  task_index    int,
  attempt       int,
  error_message text,
  permanent     boolean DEFAULT false
) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  IF pgflow.fail_tasks(ARRAY[fail_task.run_id], ARRAY[fail_task.step_slug], ARRAY[fail_task.task_index],
                       ARRAY[fail_task.attempt], ARRAY[fail_task.error_message], ARRAY[fail_task.permanent]) = 0 THEN
    RETURN NULL;
  END IF;
  RETURN (SELECT t.status FROM pgflow.step_tasks t
          WHERE t.run_id = fail_task.run_id AND t.task_index = fail_task.task_index
            AND t.step_id = (pgflow._task_step_ids(ARRAY[fail_task.run_id], ARRAY[fail_task.step_slug]))[1]);
END $$;

-- _reap_expired fails the tasks of the given steps whose last allowed attempt
-- outlived its lease ("timeout"), and their runs. Expired leases with
-- attempts left are taken over by claim_tasks instead. A task locked by
-- someone else is being reported right now, so it is left to them.
CREATE FUNCTION pgflow._reap_expired(p_flow_slugs text[], p_step_slugs text[], p_limit int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
  v_runs  uuid[];
  v_n     int;
  v_row   record;
BEGIN
  -- Only the p_limit oldest expired leases of each step are looked at: the
  -- claim takes over the others among them, so each claim moves the head of
  -- the expired leases on. (Looking at them all, a claim after a crash that
  -- left a wide fanout's leases to expire read every one of them.)
  SELECT array_agg(DISTINCT t.run_id) INTO v_runs
  FROM (SELECT DISTINCT u.flow_slug, u.step_slug FROM unnest(p_flow_slugs, p_step_slugs) AS u(flow_slug, step_slug)) w
  JOIN pgflow.step_options so ON so.flow_slug = w.flow_slug AND so.step_slug = w.step_slug
  CROSS JOIN LATERAL (
    SELECT t.run_id, t.failures FROM pgflow.step_tasks t
    WHERE t.step_id = so.step_id
      AND t.status = 'started' AND t.visible_at <= now()
    ORDER BY t.visible_at
    LIMIT p_limit) t
  WHERE t.failures + 1 >= so.max_attempts;
  IF v_runs IS NULL THEN
    RETURN 0;
  END IF;

  -- Lock order: the runs, then all their step states, then the tasks.
  PERFORM 1 FROM pgflow.runs r WHERE r.run_id = ANY (v_runs) ORDER BY r.run_id FOR UPDATE;
  PERFORM 1 FROM pgflow.step_states ss WHERE ss.run_id = ANY (v_runs)
  ORDER BY ss.run_id, ss.step_slug FOR UPDATE OF ss;

  v_n := 0;
  FOR v_row IN
    WITH reaped AS (
      UPDATE pgflow.step_tasks t
      SET status = 'failed', failures = t.failures + 1, ended_at = now(),
          error_message = format('timeout: attempt %s did not finish within %s', t.attempt,
            (SELECT so.timeout FROM pgflow.step_options so WHERE so.flow_slug = t.flow_slug AND so.step_slug = t.step_slug))
      WHERE t.ctid = ANY (ARRAY(
        SELECT x.ctid FROM pgflow.step_tasks x
        JOIN pgflow.step_options so ON so.flow_slug = x.flow_slug AND so.step_slug = x.step_slug
        WHERE x.run_id = ANY (v_runs) AND x.status = 'started' AND x.visible_at <= now()
          AND x.failures + 1 >= so.max_attempts
          AND x.step_id IN (SELECT w.step_id FROM pgflow._step_ids(p_flow_slugs, p_step_slugs) w)
        FOR UPDATE OF x SKIP LOCKED))
      RETURNING t.run_id, t.step_slug, t.task_index, t.error_message
    )
    SELECT DISTINCT ON (reaped.run_id) reaped.run_id, reaped.step_slug, reaped.task_index, reaped.error_message
    FROM reaped ORDER BY reaped.run_id, reaped.step_slug, reaped.task_index
  LOOP
    PERFORM pgflow._end_run(v_row.run_id, 'failed', v_row.step_slug, v_row.task_index, v_row.error_message);
    v_n := v_n + 1;
  END LOOP;
  RETURN v_n;
END $$;

-- _step_ids returns the number of each given step (flow_slugs[i],
-- step_slugs[i]); NULL for a step that is not defined. Each is looked up by
-- a sub-select: joined to the steps, a small table's statistics can plan a
-- scan of them all.
CREATE FUNCTION pgflow._step_ids(p_flow_slugs text[], p_step_slugs text[])
RETURNS TABLE (step_id int)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT (SELECT s.step_id FROM pgflow.steps s WHERE s.flow_slug = u.flow_slug AND s.step_slug = u.step_slug)
  FROM unnest(p_flow_slugs, p_step_slugs) AS u(flow_slug, step_slug);
END;

-- _steps_in_turn returns the distinct steps of a claim with their ids
-- (NULL for a step that is not defined), starting from a different one for
-- each turn (turn modulo their number) and then in (flow, step) order.
CREATE FUNCTION pgflow._steps_in_turn(p_flow_slugs text[], p_step_slugs text[], p_turn bigint)
RETURNS TABLE (flow_slug text, step_slug text, step_id int)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT d.flow_slug, d.step_slug, d.step_id
  FROM (SELECT u.flow_slug, u.step_slug,
               (SELECT s.step_id FROM pgflow.steps s WHERE s.flow_slug = u.flow_slug AND s.step_slug = u.step_slug) AS step_id,
               (p_turn % count(*) OVER () + row_number() OVER (ORDER BY u.flow_slug, u.step_slug)) % count(*) OVER () AS turn
        FROM (SELECT DISTINCT v.flow_slug, v.step_slug
              FROM unnest(p_flow_slugs, p_step_slugs) AS v(flow_slug, step_slug)) u) d
  ORDER BY d.turn;
END;

-- claim_tasks claims up to max_tasks claimable tasks of the given steps
-- (flow_slugs[i], step_slugs[i]) for a worker and returns each with its input
-- ready to decode: the run input (unless with_run_input[i] is false), the
-- outputs of a single step's dependencies keyed by slug, or a fanout task's
-- own element. Each claim starts a new attempt leased for the step's timeout
-- plus lease_grace; an attempt whose lease has expired is taken over by the
-- next claim (counting as a failed "timeout" attempt), or fails the run when
-- it was the last one. Within a step, the tasks visible longest go first;
-- the steps take turns at coming first as turn grows: a worker numbers its
-- claims (without it, a counter shared by every caller is used, whose turns
-- other callers' claims can skip).
CREATE FUNCTION pgflow.claim_tasks(
  worker_id      uuid,
  flow_slugs     text[],
  step_slugs     text[],
  max_tasks      int,
  with_run_input boolean[] DEFAULT NULL,
  lease_grace    interval DEFAULT '2 seconds',
  turn           bigint DEFAULT NULL
) RETURNS TABLE (
  run_id      uuid,
  flow_slug   text,
  step_slug   text,
  task_index  int,
  attempt     int,
  timeout     interval,
  run_input   jsonb,
  deps_output json,
  item        jsonb
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_expired     tid[];
  v_queued      tid[];
  v_tids        tid[];
  v_any_expired boolean;
  v_turn        bigint;
  v_claimed     int;
BEGIN
  IF claim_tasks.max_tasks IS NULL OR claim_tasks.max_tasks < 1 OR coalesce(cardinality(claim_tasks.flow_slugs), 0) = 0 THEN
    RETURN;
  END IF;
  IF cardinality(claim_tasks.step_slugs) IS DISTINCT FROM cardinality(claim_tasks.flow_slugs)
     OR (claim_tasks.with_run_input IS NOT NULL
         AND cardinality(claim_tasks.with_run_input) <> cardinality(claim_tasks.flow_slugs)) THEN
    RAISE EXCEPTION 'claim_tasks: argument arrays differ in length' USING ERRCODE = 'PF005';
  END IF;

  -- Queued tasks are locked (by address, never waited for) in the same
  -- statement that looks, without locks, for expired leases. Those are
  -- rare; when there are, a last attempt that outlived its lease fails its
  -- run, and the others are taken over first, before queued tasks.
  -- (Holding queued tasks while the reaping waits for run rows is safe:
  -- no one holding a run row or step state waits for a queued task.)
  -- The steps take turns at coming first (a claim fills up from the first
  -- step with tasks): a step with a backlog (a wide fanout) then does not
  -- keep the others waiting until it is drained.
  v_turn := coalesce(claim_tasks.turn, nextval('pgflow.claim_turns'));
  SELECT ARRAY(
           SELECT x.ctid
           FROM pgflow._steps_in_turn(claim_tasks.flow_slugs, claim_tasks.step_slugs, v_turn) w
           CROSS JOIN LATERAL (
             SELECT t.ctid FROM pgflow.step_tasks t
             WHERE t.step_id = w.step_id
               AND t.status = 'queued' AND t.visible_at <= now()
             ORDER BY t.visible_at
             LIMIT claim_tasks.max_tasks
             FOR UPDATE OF t SKIP LOCKED) x
           LIMIT claim_tasks.max_tasks),
         EXISTS (
           SELECT 1
           FROM pgflow._step_ids(claim_tasks.flow_slugs, claim_tasks.step_slugs) w
           CROSS JOIN LATERAL (
             SELECT 1 FROM pgflow.step_tasks t
             WHERE t.step_id = w.step_id
               AND t.status = 'started' AND t.visible_at <= now()
             LIMIT 1) x)
  INTO v_queued, v_any_expired;

  v_expired := '{}';
  IF v_any_expired THEN
    PERFORM pgflow._reap_expired(claim_tasks.flow_slugs, claim_tasks.step_slugs, claim_tasks.max_tasks);
    v_expired := ARRAY(
      SELECT x.ctid
      FROM pgflow._steps_in_turn(claim_tasks.flow_slugs, claim_tasks.step_slugs, v_turn) w
      JOIN pgflow.step_options so ON so.flow_slug = w.flow_slug AND so.step_slug = w.step_slug
      CROSS JOIN LATERAL (
        SELECT t.ctid FROM pgflow.step_tasks t
        WHERE t.step_id = so.step_id
          AND t.status = 'started' AND t.visible_at <= now() AND t.failures + 1 < so.max_attempts
        ORDER BY t.visible_at
        LIMIT claim_tasks.max_tasks
        FOR UPDATE OF t SKIP LOCKED) x
      LIMIT claim_tasks.max_tasks);
    -- Queued tasks locked beyond the limit stay unclaimed (and locked
    -- until commit; other claims skip them meanwhile).
    v_queued := v_queued[1:claim_tasks.max_tasks - cardinality(v_expired)];
  END IF;
  v_tids := v_expired || v_queued;
  IF cardinality(v_tids) = 0 THEN
    RETURN;
  END IF;

  RETURN QUERY
  WITH opts AS MATERIALIZED (
    -- Each requested step's options, computed once, not once per task.
    -- Written so that the planner expects a row per requested step: told
    -- "one row", it scans the tasks by address once per step.
    SELECT w.flow_slug, w.step_slug, so.step_type, so.deps_count, so.timeout, so.max_attempts, so.base_delay, w.with_run
    FROM (SELECT u.flow_slug, u.step_slug, bool_or(coalesce(u.with_run, true)) AS with_run
          FROM unnest(claim_tasks.flow_slugs, claim_tasks.step_slugs, claim_tasks.with_run_input)
               AS u(flow_slug, step_slug, with_run)
          GROUP BY u.flow_slug, u.step_slug) w
    LEFT JOIN pgflow.step_options so ON so.flow_slug = w.flow_slug AND so.step_slug = w.step_slug
  ), claimed AS (
    UPDATE pgflow.step_tasks t
    -- A task whose run has ended, or whose step definition is gone
    -- (deleted by hand while the claim ran), is cancelled instead of
    -- handed out. (Claims find tasks by their step's number, so once a
    -- step's definition is gone its tasks are no longer found at all.)
    SET status = CASE WHEN r.status = 'started' AND l.timeout IS NOT NULL THEN 'started' ELSE 'cancelled' END,
        attempt = t.attempt + 1,
        failures = t.failures + (t.status = 'started')::int,
        error_message = CASE WHEN t.status = 'started'
                             THEN format('timeout: attempt %s did not finish within %s', t.attempt, l.timeout)
                             ELSE t.error_message END,
        -- The lease; when another attempt would remain after this one, it
        -- also holds the retry delay that a timeout incurs.
        visible_at = now() + coalesce(l.timeout, interval '0') + coalesce(claim_tasks.lease_grace, interval '2 seconds')
                     + CASE WHEN t.failures + (t.status = 'started')::int + 1 < l.max_attempts
                            THEN pgflow._retry_delay(l.base_delay, t.failures + (t.status = 'started')::int + 1)
                            ELSE interval '0' END,
        started_at = now(),
        ended_at = CASE WHEN r.status = 'started' AND l.timeout IS NOT NULL THEN NULL ELSE now() END,
        worker_id = claim_tasks.worker_id
    FROM opts l, pgflow.runs r
    -- The tasks are reached by address only: any other condition on the
    -- task table would let the planner walk a whole step's tasks.
    WHERE t.ctid = ANY (v_tids)
      AND l.flow_slug = t.flow_slug AND l.step_slug = t.step_slug AND r.run_id = t.run_id
    RETURNING t.run_id, t.flow_slug, t.step_slug, t.task_index, t.attempt, t.status, t.item,
              l.timeout, l.with_run, r.input AS run_input, l.step_type, l.deps_count
  )
  SELECT c.run_id, c.flow_slug, c.step_slug, c.task_index, c.attempt, c.timeout,
         CASE WHEN c.with_run THEN c.run_input END,
         CASE WHEN c.step_type = 'single' AND c.deps_count > 0 THEN
           (SELECT ('{' || string_agg(to_json(d.dep_slug)::text || ': ' || coalesce(ss.output::text, 'null'), ', '
                                      ORDER BY octet_length(d.dep_slug), d.dep_slug COLLATE "C") || '}')::json
            FROM pgflow.deps d
            JOIN pgflow.step_states ss ON ss.run_id = c.run_id AND ss.step_slug = d.dep_slug
            WHERE d.flow_slug = c.flow_slug AND d.step_slug = c.step_slug)
         END,
         c.item
  FROM claimed c
  WHERE c.status = 'started';

  -- A task whose run is gone (deleted by hand) is not reached by the join
  -- to the runs above; when the claim handed out fewer tasks than it
  -- locked, such tasks among them are cancelled.
  GET DIAGNOSTICS v_claimed = ROW_COUNT;
  IF v_claimed < cardinality(v_tids) THEN
    UPDATE pgflow.step_tasks t
    SET status = 'cancelled', ended_at = now()
    WHERE t.ctid = ANY (v_tids) AND t.status IN ('queued', 'started')
      AND NOT EXISTS (SELECT 1 FROM pgflow.runs r WHERE r.run_id = t.run_id);
  END IF;
END $$;

-- _complete_batch records the outputs of a batch of fanout tasks (single
-- steps complete in complete_tasks) and decrements their step states in one
-- statement. Guarded, it does nothing (passed is false) unless every step
-- of the batch, as last committed, keeps tasks left after the batch, and
-- it then decrements only steps that still do once locked (the caller
-- holds no run rows); the caller compares counted_steps with
-- decremented_steps to see whether that held for every step. It returns
-- the steps whose last task this batch completed, which the caller
-- completes with their aggregated output.
CREATE FUNCTION pgflow._complete_batch(
  p_run_ids uuid[], p_step_slugs text[], p_task_indexes int[], p_attempts int[], p_outputs jsonb[],
  p_guarded boolean,
  OUT passed boolean, OUT counted_steps int, OUT decremented_steps int, OUT applied int,
  OUT done_runs uuid[], OUT done_steps text[], OUT done_release boolean)
LANGUAGE plpgsql AS $$
BEGIN
  WITH c AS (
    SELECT * FROM unnest(p_run_ids, p_step_slugs, p_task_indexes, p_attempts, p_outputs)
             AS c(run_id, step_slug, task_index, attempt, output)
  ), steps AS MATERIALIZED (
    -- The batch's steps, the status of their runs and whether the guard
    -- holds for them, looked up once per step rather than once per task.
    SELECT k.run_id, k.step_slug, ss.run_id IS NOT NULL AS has_state,
           (SELECT s.step_id FROM pgflow.steps s WHERE s.flow_slug = ss.flow_slug AND s.step_slug = ss.step_slug) AS step_id,
           NOT p_guarded OR coalesce(ss.status = 'started' AND ss.remaining_tasks > k.n, false) AS ok,
           (SELECT r.status FROM pgflow.runs r WHERE r.run_id = k.run_id) AS run_status
    FROM (SELECT c.run_id, c.step_slug, count(*)::int AS n FROM c GROUP BY c.run_id, c.step_slug) k
    LEFT JOIN pgflow.step_states ss ON ss.run_id = k.run_id AND ss.step_slug = k.step_slug
  ), keyed AS MATERIALIZED (
    -- Each task's key with its step's number, in one relation: with the
    -- number from the steps and the index from the batch, the planner
    -- may look the tasks up by (run, step) alone and filter the rest.
    SELECT c.run_id, k.step_id, c.task_index, c.attempt, c.output, k.run_status
    FROM c JOIN steps k ON k.run_id = c.run_id AND k.step_slug = c.step_slug
    WHERE NOT EXISTS (SELECT 1 FROM steps WHERE NOT steps.ok) AND k.has_state
  ), done AS (
    -- A task keeps its output for the aggregate. A task whose run has
    -- ended (a race with a cancel) is cancelled instead; one whose step
    -- state is gone (deleted by hand) is left alone.
    UPDATE pgflow.step_tasks t
    SET status = CASE WHEN k.run_status = 'started' THEN 'completed' ELSE 'cancelled' END,
        ended_at = now(),
        output = CASE WHEN k.run_status = 'started' THEN coalesce(k.output, 'null'::jsonb) END
    FROM keyed k
    WHERE t.run_id = k.run_id AND t.step_id = k.step_id AND t.task_index = k.task_index
      AND t.attempt = k.attempt AND (t.status = 'started') IS TRUE
    RETURNING t.run_id, t.step_slug, t.status
  ), counted AS (
    SELECT done.run_id, done.step_slug, count(*)::int AS n
    FROM done
    WHERE done.status = 'completed'
    GROUP BY done.run_id, done.step_slug
  ), locked_states AS MATERIALIZED (
    -- The step states in the lock order, taken only now: a fanout's hot
    -- counter is held from here until commit, not while the tasks update.
    SELECT ss.run_id, ss.step_slug, counted.n
    FROM pgflow.step_states ss
    JOIN counted ON ss.run_id = counted.run_id AND ss.step_slug = counted.step_slug
    ORDER BY ss.run_id, ss.step_slug
    FOR UPDATE OF ss
  ), decremented AS (
    UPDATE pgflow.step_states ss
    SET remaining_tasks = ss.remaining_tasks - l.n
    FROM locked_states l
    WHERE ss.run_id = l.run_id AND ss.step_slug = l.step_slug
      AND ss.status = 'started'
      AND (NOT p_guarded OR ss.remaining_tasks > l.n)
    RETURNING ss.run_id, ss.step_slug, ss.flow_slug, ss.remaining_tasks, l.n
  )
  SELECT coalesce((SELECT bool_and(steps.ok) FROM steps), false),
         (SELECT count(*) FROM counted), count(*), coalesce(sum(d.n), 0)::int,
         coalesce(array_agg(d.run_id) FILTER (WHERE d.remaining_tasks = 0), '{}'),
         coalesce(array_agg(d.step_slug) FILTER (WHERE d.remaining_tasks = 0), '{}'),
         coalesce(bool_or(EXISTS (SELECT 1 FROM pgflow.deps x WHERE x.flow_slug = d.flow_slug AND x.dep_slug = d.step_slug))
                  FILTER (WHERE d.remaining_tasks = 0), false)
  INTO passed, counted_steps, decremented_steps, applied, done_runs, done_steps, done_release
  FROM decremented d;
END $$;

-- complete_tasks records task outputs (fenced by attempt, like fail_tasks)
-- and returns how many applied. The completion that brings a step's
-- remaining tasks to zero completes the step, aggregating a fanout step's
-- output as a JSON array ordered by task index, and moves the run on.
-- Three paths: fanout tasks that cannot finish their step (the fast path);
-- single steps, each finished by its one task, in one statement that also
-- moves their runs on; the other fanout tasks through _complete_batch and
-- _advance (the general path).
CREATE FUNCTION pgflow.complete_tasks(
  run_ids      uuid[],
  step_slugs   text[],
  task_indexes int[],
  attempts     int[],
  outputs      jsonb[]
) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
  v_passed      boolean;
  v_steps       int;
  v_counted     int;
  v_applied     int;
  v_done_runs   uuid[];
  v_done_steps  text[];
  v_release     boolean;  -- whether a completed step has dependents
  v_rest        int[];  -- positions of the results left to the general path
  v_ready_runs  uuid[];
  v_ready_steps text[];
  v_flows       text[];
  v_ended       text[];
  v_more        int;
BEGIN
  IF coalesce(cardinality(run_ids), 0) = 0 THEN
    RETURN 0;
  END IF;
  IF cardinality(step_slugs) IS DISTINCT FROM cardinality(run_ids)
     OR cardinality(task_indexes) IS DISTINCT FROM cardinality(run_ids)
     OR cardinality(attempts) IS DISTINCT FROM cardinality(run_ids)
     OR cardinality(outputs) IS DISTINCT FROM cardinality(run_ids) THEN
    RAISE EXCEPTION 'complete_tasks: argument arrays differ in length' USING ERRCODE = 'PF005';
  END IF;

  -- The fast path: a batch that cannot finish any step (each of its steps
  -- has more unfinished tasks than the batch completes, as last committed)
  -- decrements its step states at the end of one statement, without the
  -- run rows; a batch that might finish one does nothing there. The
  -- decrement itself is guarded again, and when a guard fails (a step got
  -- closer to its end meanwhile), the error escape from the block undoes
  -- the attempt and releases its locks, and the slow path runs instead. A
  -- batch of first tasks only is taken to be one of single steps, which
  -- always finish their step, and goes straight to the slow path (for the
  -- first tasks of fanouts that is merely slower).
  IF 0 < ANY (task_indexes) THEN
    BEGIN
      SELECT * INTO v_passed, v_counted, v_steps, v_applied, v_done_runs, v_done_steps, v_release
      FROM pgflow._complete_batch(run_ids, step_slugs, task_indexes, attempts, outputs, true);
      IF v_passed AND v_steps < v_counted THEN
        RAISE EXCEPTION 'complete_tasks: batch may finish a step' USING ERRCODE = 'PF900';
      END IF;
      IF v_passed THEN
        RETURN v_applied;
      END IF;
    EXCEPTION WHEN SQLSTATE 'PF900' THEN
      NULL; -- undone; take the slow path
    END;
  END IF;

  -- The slow path: each run row, then its step states, in (run, step)
  -- order; conflicting callers meet first on a run row they share.
  PERFORM 1 FROM pgflow.runs r JOIN pgflow.step_states ss ON ss.run_id = r.run_id
  WHERE r.run_id = ANY (run_ids)
  ORDER BY r.run_id, ss.step_slug
  FOR UPDATE OF r, ss;

  -- Single steps (the first task of a step whose type is single) complete
  -- in one statement: the task, its step state, the dependents it releases
  -- (a single dependent with nothing left to wait for gets its task at
  -- once) and the run's count of remaining steps, completing the run with
  -- the output of its leaf steps when none is left. Everything else in the
  -- batch (fanout tasks) is left to the general path below.
  WITH c AS (
    SELECT * FROM unnest(run_ids, step_slugs, task_indexes, attempts, outputs) WITH ORDINALITY
             AS c(run_id, step_slug, task_index, attempt, output, ord)
  ), k AS MATERIALIZED (
    -- Each first task's step type and flow, and its run's status.
    SELECT c.run_id, c.step_slug, c.task_index, c.attempt, c.output, c.ord, ss.flow_slug,
           (SELECT s.step_type FROM pgflow.steps s WHERE s.flow_slug = ss.flow_slug AND s.step_slug = ss.step_slug) AS step_type,
           (SELECT s.step_id FROM pgflow.steps s WHERE s.flow_slug = ss.flow_slug AND s.step_slug = ss.step_slug) AS step_id,
           (SELECT r.status FROM pgflow.runs r WHERE r.run_id = c.run_id) AS run_status
    FROM c
    JOIN pgflow.step_states ss ON ss.run_id = c.run_id AND ss.step_slug = c.step_slug
    WHERE c.task_index = 0
  ), done AS (
    -- A task whose run has ended (a race with a cancel) is cancelled.
    UPDATE pgflow.step_tasks t
    SET status = CASE WHEN k.run_status = 'started' THEN 'completed' ELSE 'cancelled' END,
        ended_at = now()
    FROM k
    WHERE k.step_type = 'single'
      AND t.run_id = k.run_id AND t.step_id = k.step_id AND t.task_index = k.task_index
      AND t.attempt = k.attempt AND (t.status = 'started') IS TRUE
    RETURNING t.run_id, t.step_slug, t.flow_slug, t.status, coalesce(k.output, 'null'::jsonb)::json AS output
  ), completed AS (
    UPDATE pgflow.step_states ss
    SET status = 'completed', remaining_tasks = ss.remaining_tasks - 1, output = done.output, ended_at = now()
    FROM done
    WHERE done.status = 'completed'
      AND ss.run_id = done.run_id AND ss.step_slug = done.step_slug AND ss.status = 'started'
    RETURNING ss.run_id, ss.step_slug, ss.flow_slug, ss.output,
              EXISTS (SELECT 1 FROM pgflow.deps d WHERE d.flow_slug = ss.flow_slug AND d.dep_slug = ss.step_slug) AS has_dependents
  ), dependents AS (
    SELECT cm.run_id, d.step_slug, count(*)::int AS n, s.step_type = 'single' AS single,
           coalesce(s.opt_start_delay, interval '0') AS start_delay, s.step_id
    FROM completed cm
    JOIN pgflow.deps d ON d.flow_slug = cm.flow_slug AND d.dep_slug = cm.step_slug
    JOIN pgflow.steps s ON s.flow_slug = d.flow_slug AND s.step_slug = d.step_slug
    WHERE cm.has_dependents
    GROUP BY cm.run_id, d.step_slug, s.step_type, s.opt_start_delay, s.step_id
  ), released AS (
    -- The release of _advance, written out again here: calling _advance
    -- (or a shared function) costs a chain step about a third of its
    -- completion time.
    UPDATE pgflow.step_states ss
    SET remaining_deps = ss.remaining_deps - dep.n,
        status = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN 'started' ELSE ss.status END,
        total_tasks = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN 1 ELSE ss.total_tasks END,
        remaining_tasks = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN 1 ELSE ss.remaining_tasks END,
        started_at = CASE WHEN dep.single AND ss.remaining_deps = dep.n THEN now() ELSE ss.started_at END
    FROM dependents dep
    WHERE ss.run_id = dep.run_id AND ss.step_slug = dep.step_slug AND ss.status = 'created'
    RETURNING ss.run_id, ss.step_slug, ss.flow_slug, ss.status, ss.remaining_deps, dep.start_delay, dep.step_id
  ), queued AS (
    INSERT INTO pgflow.step_tasks (run_id, step_slug, task_index, step_id, flow_slug, status, visible_at, item)
    SELECT released.run_id, released.step_slug, 0, released.step_id, released.flow_slug, 'queued', now() + released.start_delay, NULL
    FROM released WHERE released.status = 'started'
  ), counts AS (
    SELECT cm.run_id, count(*)::int AS n,
           array_agg(cm.step_slug) FILTER (WHERE NOT cm.has_dependents) AS leaf_slugs,
           array_agg(cm.output) FILTER (WHERE NOT cm.has_dependents) AS leaf_outputs
    FROM completed cm GROUP BY cm.run_id
  ), runs_done AS (
    -- The run output is an object keyed by leaf step slug: the outputs of
    -- the leaf steps completed here, and those in the other leaf step
    -- states (this statement reads the step states as they were before).
    UPDATE pgflow.runs r
    SET remaining_steps = r.remaining_steps - counts.n,
        status = CASE WHEN r.remaining_steps = counts.n THEN 'completed' ELSE r.status END,
        ended_at = CASE WHEN r.remaining_steps = counts.n THEN now() ELSE r.ended_at END,
        output = CASE WHEN r.remaining_steps = counts.n THEN
                   (SELECT ('{' || coalesce(string_agg(to_json(l.slug)::text || ': ' || coalesce(l.output::text, 'null'), ', '
                                                      ORDER BY octet_length(l.slug), l.slug COLLATE "C"), '') || '}')::json
                    FROM (SELECT u.slug, u.output FROM unnest(counts.leaf_slugs, counts.leaf_outputs) AS u(slug, output)
                          UNION ALL
                          -- (Only a flow with steps besides these has other
                          -- step states to look at: a one-step run skips the
                          -- scan, which the planner does as a sort and merge.)
                          SELECT ss.step_slug, ss.output
                          FROM pgflow.step_states ss
                          WHERE EXISTS (SELECT 1 FROM pgflow.steps s
                                        WHERE s.flow_slug = r.flow_slug
                                          AND s.step_slug <> ALL (coalesce(counts.leaf_slugs, '{}')))
                            AND ss.run_id = r.run_id
                            AND ss.step_slug <> ALL (coalesce(counts.leaf_slugs, '{}'))
                            AND NOT EXISTS (SELECT 1 FROM pgflow.deps d
                                            WHERE d.flow_slug = ss.flow_slug AND d.dep_slug = ss.step_slug)) l)
                 ELSE r.output END
    FROM counts
    WHERE r.run_id = counts.run_id AND r.status = 'started'
    RETURNING r.run_id, r.status
  )
  SELECT (SELECT count(*)::int FROM completed),
         ARRAY(SELECT c.ord::int FROM c WHERE c.task_index <> 0
               UNION ALL SELECT k.ord::int FROM k WHERE k.step_type IS DISTINCT FROM 'single'),
         ready.runs, ready.steps,
         ARRAY(SELECT DISTINCT released.flow_slug FROM released WHERE released.status = 'started'),
         ARRAY(SELECT json_build_object('status', 'completed', 'run_ids', json_agg(e.run_id))::text
               FROM (SELECT runs_done.run_id, (row_number() OVER () - 1) / 100 AS chunk
                     FROM runs_done WHERE runs_done.status = 'completed') e
               GROUP BY e.chunk)
  INTO v_applied, v_rest, v_ready_runs, v_ready_steps, v_flows, v_ended
  FROM (SELECT array_agg(released.run_id) AS runs, array_agg(released.step_slug) AS steps
        FROM released WHERE released.status = 'created' AND released.remaining_deps = 0) ready;

  PERFORM pg_notify('pgflow_tasks', f) FROM unnest(v_flows) AS f;
  PERFORM pg_notify('pgflow_runs', p) FROM unnest(v_ended) AS p;

  -- The general path, for the rest of the batch.
  IF cardinality(v_rest) > 0 THEN
    SELECT * INTO v_passed, v_counted, v_steps, v_more, v_done_runs, v_done_steps, v_release
    FROM pgflow._complete_batch(ARRAY(SELECT run_ids[o] FROM unnest(v_rest) AS o),
                                ARRAY(SELECT step_slugs[o] FROM unnest(v_rest) AS o),
                                ARRAY(SELECT task_indexes[o] FROM unnest(v_rest) AS o),
                                ARRAY(SELECT attempts[o] FROM unnest(v_rest) AS o),
                                ARRAY(SELECT outputs[o] FROM unnest(v_rest) AS o), false);
    v_applied := v_applied + v_more;

    IF cardinality(v_done_runs) > 0 THEN
      -- Complete the fanout steps that reached zero: a new statement, so it
      -- sees every task output committed before the step state locks were
      -- granted, plus this batch's own.
      UPDATE pgflow.step_states ss
      SET status = 'completed', ended_at = now(),
          output = (SELECT coalesce(json_agg(t.output ORDER BY t.task_index), '[]')
                    FROM pgflow.step_tasks t
                    WHERE t.run_id = ss.run_id
                      AND t.step_id = (SELECT s.step_id FROM pgflow.steps s
                                       WHERE s.flow_slug = ss.flow_slug AND s.step_slug = ss.step_slug))
      FROM unnest(v_done_runs, v_done_steps) AS d(run_id, step_slug)
      WHERE ss.run_id = d.run_id AND ss.step_slug = d.step_slug;
    END IF;
  END IF;
  -- Fanout steps completed above, and fanout steps released by the single
  -- steps (they start now), move their runs on.
  IF cardinality(v_done_runs) > 0 OR v_ready_runs IS NOT NULL THEN
    PERFORM pgflow._advance(v_done_runs, v_done_steps, v_ready_runs, v_ready_steps, coalesce(v_release, false));
  END IF;
  RETURN v_applied;
END $$;

-- complete_task records one task's output; returns whether it applied.
CREATE FUNCTION pgflow.complete_task(run_id uuid, step_slug text, task_index int, attempt int, output jsonb)
RETURNS boolean
LANGUAGE sql
RETURN pgflow.complete_tasks(ARRAY[run_id], ARRAY[step_slug], ARRAY[task_index], ARRAY[attempt],
                             ARRAY[coalesce(output, 'null'::jsonb)]) > 0;

-- release_tasks hands started tasks back to the queue without counting a
-- failed attempt (a worker shutting down), so another worker can take them at
-- once. Fenced by attempt; returns how many were released.
CREATE FUNCTION pgflow.release_tasks(run_ids uuid[], step_slugs text[], task_indexes int[], attempts int[])
RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
  v_n     int;
  v_flows text[];
BEGIN
  -- Step states first, so that a run ending meanwhile is seen below.
  PERFORM 1 FROM pgflow.step_states ss
  WHERE (ss.run_id, ss.step_slug) IN (SELECT x.run_id, x.step_slug FROM unnest(run_ids, step_slugs) AS x(run_id, step_slug))
  ORDER BY ss.run_id, ss.step_slug
  FOR UPDATE OF ss;

  WITH r AS (
    SELECT * FROM unnest(run_ids, pgflow._task_step_ids(run_ids, step_slugs), task_indexes, attempts)
                  AS r(run_id, step_id, task_index, attempt)
  ), released AS (
    UPDATE pgflow.step_tasks t
    SET status = CASE WHEN (SELECT run.status FROM pgflow.runs run WHERE run.run_id = t.run_id) = 'started'
                      THEN 'queued' ELSE 'cancelled' END,
        visible_at = now(), worker_id = NULL
    FROM r
    WHERE t.run_id = r.run_id AND t.step_id = r.step_id AND t.task_index = r.task_index
      AND t.attempt = r.attempt AND (t.status = 'started') IS TRUE
    RETURNING t.flow_slug, t.status
  )
  SELECT count(*) FILTER (WHERE released.status = 'queued')::int,
         coalesce(array_agg(DISTINCT released.flow_slug) FILTER (WHERE released.status = 'queued'), '{}')
  INTO v_n, v_flows FROM released;
  PERFORM pg_notify('pgflow_tasks', f) FROM unnest(v_flows) AS f;
  RETURN v_n;
END $$;

-- next_visible_at returns when the next task of the given steps becomes
-- claimable (a delayed queued task, or a lease that will expire), or NULL.
CREATE FUNCTION pgflow.next_visible_at(flow_slugs text[], step_slugs text[]) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (
    WITH w AS MATERIALIZED (  -- each step's number, looked up once
      SELECT * FROM pgflow._step_ids(next_visible_at.flow_slugs, next_visible_at.step_slugs))
    SELECT min(least(q.visible_at, l.visible_at))
    FROM w
    LEFT JOIN LATERAL (
      SELECT t.visible_at FROM pgflow.step_tasks t
      WHERE t.step_id = w.step_id AND t.status = 'queued'
      ORDER BY t.visible_at LIMIT 1) q ON true
    LEFT JOIN LATERAL (
      SELECT t.visible_at FROM pgflow.step_tasks t
      WHERE t.step_id = w.step_id AND t.status = 'started'
      ORDER BY t.visible_at LIMIT 1) l ON true);
END $$;

------------------------------------------------------------------------------
-- Runs
------------------------------------------------------------------------------

-- cancel_run ends a started run as cancelled: its queued tasks leave the
-- queue and late results change nothing. Returns false when the run had
-- already ended.
CREATE FUNCTION pgflow.cancel_run(run_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM pgflow.runs r WHERE r.run_id = cancel_run.run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'run % does not exist', cancel_run.run_id USING ERRCODE = 'PF004';
  END IF;
  RETURN pgflow._end_run(cancel_run.run_id, 'cancelled', NULL, NULL, NULL);
END $$;

-- get_run returns a run with its step states as JSON, or NULL when there is
-- no such run.
CREATE FUNCTION pgflow.get_run(run_id uuid) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (
  SELECT jsonb_build_object(
    'run_id', r.run_id,
    'flow_slug', r.flow_slug,
    'status', r.status,
    'input', r.input,
    'output', r.output,
    'remaining_steps', r.remaining_steps,
    'error_step', r.error_step,
    'error_task_index', r.error_task_index,
    'error_message', r.error_message,
    'started_at', r.started_at,
    'ended_at', r.ended_at,
    'steps', (
      SELECT coalesce(jsonb_agg(jsonb_build_object(
               'step_slug', ss.step_slug,
               'step_type', s.step_type,
               'status', ss.status,
               'remaining_deps', ss.remaining_deps,
               'total_tasks', ss.total_tasks,
               'remaining_tasks', ss.remaining_tasks,
               'error_message', ss.error_message,
               'started_at', ss.started_at,
               'ended_at', ss.ended_at) ORDER BY s.step_index), '[]')
      FROM pgflow.step_states ss
      JOIN pgflow.steps s ON s.flow_slug = ss.flow_slug AND s.step_slug = ss.step_slug
      WHERE ss.run_id = r.run_id))
  FROM pgflow.runs r
  WHERE r.run_id = get_run.run_id);

------------------------------------------------------------------------------
-- Workers
------------------------------------------------------------------------------

-- worker_heartbeat registers a worker or records that it is alive.
CREATE FUNCTION pgflow.worker_heartbeat(worker_id uuid, flow_slugs text[], hostname text DEFAULT NULL)
RETURNS void
LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO pgflow.workers AS w (worker_id, flow_slugs, hostname)
  VALUES (worker_heartbeat.worker_id, coalesce(worker_heartbeat.flow_slugs, '{}'), worker_heartbeat.hostname)
  ON CONFLICT (worker_id) DO UPDATE
  SET last_heartbeat_at = now(), flow_slugs = excluded.flow_slugs, stopped_at = NULL;
END;

-- worker_stopped records that a worker has shut down.
CREATE FUNCTION pgflow.worker_stopped(worker_id uuid) RETURNS void
LANGUAGE sql
BEGIN ATOMIC
  UPDATE pgflow.workers w SET stopped_at = now(), last_heartbeat_at = now()
  WHERE w.worker_id = worker_stopped.worker_id;
END;

------------------------------------------------------------------------------
-- Plans
------------------------------------------------------------------------------

-- The engine's statements are planned once per connection and reused: their
-- shapes (index lookups by key, TID scans, ordered LATERAL index scans) do
-- not depend on parameter values, and planning them anew on every call cost
-- several times more than running them.
--
-- Sequential scans are off for the same statements: each touches a handful
-- of rows by key, but a plan made while a table is young (or before
-- autovacuum has analyzed it) prices a scan of the whole table below the
-- index, and keeps that plan for the connection's life. Measured on a
-- database holding 20,000 finished runs, a 3-step chain took 2.5 times as
-- long with such plans.
--
-- Starting a wide fanout materializes its input and its elements; with the
-- default work_mem they went through temporary files, which made starting
-- a 100,000-item fanout 10-15% slower.
ALTER FUNCTION pgflow.start_flows(text, jsonb[], uuid[]) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
  SET work_mem = '64MB';
ALTER FUNCTION pgflow.claim_tasks(uuid, text[], text[], int, boolean[], interval, bigint) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION pgflow.complete_tasks(uuid[], text[], int[], int[], jsonb[]) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION pgflow.fail_tasks(uuid[], text[], int[], int[], text[], boolean[]) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION pgflow.release_tasks(uuid[], text[], int[], int[]) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION pgflow.cancel_run(uuid) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION pgflow.next_visible_at(text[], text[]) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
