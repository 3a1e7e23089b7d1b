-- pgflow schema, version 3: a report and its claim in one call.
--
-- complete_and_claim reports completions and claims tasks in one statement.
-- The tasks its completions queue (the next step of a chain) are announced
-- on pgflow_tasks only when its claim leaves some of them queued: a worker
-- that hands the next step to itself no longer wakes every worker of the
-- flow, itself included, for a task already taken. complete_tasks and
-- _advance note the steps they start for it (_notify_tasks) instead of
-- announcing them at once when called from it. complete_tasks also decides
-- whether a one-step run has other leaf outputs to gather from the run's
-- step states rather than from the current step definitions.
--
-- CREATE OR REPLACE keeps a function's privileges but not its settings or
-- SECURITY DEFINER: complete_tasks gets those of versions 1 and 2 again.

-- _notify_tasks announces on pgflow_tasks that steps started and queued
-- their tasks, each given as 'flow:run:step' (slugs hold no colons or
-- commas): at once (once per flow), or, inside complete_and_claim, by noting
-- the steps for it to announce after its claim. The note is keyed by the
-- transaction, so that a value of pgflow.claim_follows set any other way
-- never holds back an announcement.
CREATE FUNCTION pgflow._notify_tasks(p_steps text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v_note text;
BEGIN
  IF current_setting('pgflow.claim_follows', true) = pg_current_xact_id()::text THEN
    v_note := set_config('pgflow.unclaimed_steps',
                         concat_ws(',', nullif(current_setting('pgflow.unclaimed_steps', true), ''),
                                   array_to_string(p_steps, ',')),
                         true);
  ELSE
    PERFORM pg_notify('pgflow_tasks', f.flow_slug)
    FROM (SELECT DISTINCT split_part(u.step, ':', 1) AS flow_slug FROM unnest(p_steps) AS u(step)) f;
  END IF;
END $$;

-- _advance moves runs forward. It takes steps that have just completed and
-- steps that have just become ready, and repeats until nothing changes:
-- completed steps release their dependents (and count down their run),
-- ready steps start (queueing their tasks), and a fanout over an empty array
-- completes at once and feeds the next round. Runs with no steps left
-- complete at the end. The caller holds the run rows of every run involved.
-- p_release false says that no step in p_done_steps has dependents.
CREATE OR REPLACE FUNCTION pgflow._advance(
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
  v_queued      text[];  -- steps that queued tasks, as flow:run:step
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
             coalesce(array_agg(concat_ws(':', released.flow_slug, released.run_id, released.step_slug))
                        FILTER (WHERE released.status = 'started'), '{}')
      INTO v_new_runs, v_new_steps, v_queued
      FROM released WHERE released.remaining_deps = 0;

      IF cardinality(v_queued) > 0 THEN
        PERFORM pgflow._notify_tasks(v_queued);
      END IF;
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
           coalesce(array_agg(concat_ws(':', started.flow_slug, started.run_id, started.step_slug))
                    FILTER (WHERE started.status = 'started'), '{}'),
           (SELECT array_agg(bad.run_id ORDER BY bad.run_id, bad.step_slug) FROM bad),
           (SELECT array_agg(bad.step_slug ORDER BY bad.run_id, bad.step_slug) FROM bad),
           (SELECT array_agg(bad.message ORDER BY bad.run_id, bad.step_slug) FROM bad)
    INTO v_done_runs, v_done_steps, v_queued, v_bad_runs, v_bad_steps, v_bad_msgs
    FROM started;

    FOR v_i IN 1 .. coalesce(cardinality(v_bad_runs), 0) LOOP
      PERFORM pgflow._end_run(v_bad_runs[v_i], 'failed', v_bad_steps[v_i], NULL, v_bad_msgs[v_i]);
    END LOOP;

    -- One notification per flow per statement (Postgres also folds
    -- duplicates within a transaction).
    IF cardinality(v_queued) > 0 THEN
      PERFORM pgflow._notify_tasks(v_queued);
    END IF;

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

-- complete_tasks records task outputs (fenced by attempt, like fail_tasks)
-- and returns how many applied. The completion that brings a step's
-- remaining tasks to zero completes the step, aggregating a fanout step's
-- output as a JSON array ordered by task index, and moves the run on.
-- Three paths: fanout tasks that cannot finish their step (the fast path);
-- single steps, each finished by its one task, in one statement that also
-- moves their runs on; the other fanout tasks through _complete_batch and
-- _advance (the general path). Tasks the completions queue (dependent
-- steps starting) are announced on pgflow_tasks (see also
-- complete_and_claim).
CREATE OR REPLACE FUNCTION pgflow.complete_tasks(
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
  v_queued      text[];  -- steps that queued tasks, as flow:run:step
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
                          -- (Only a run with step states besides these has
                          -- others to look at: a one-step run skips the scan,
                          -- which the planner does as a sort and merge.)
                          SELECT ss.step_slug, ss.output
                          FROM pgflow.step_states ss
                          WHERE EXISTS (SELECT 1 FROM pgflow.step_states o
                                        WHERE o.run_id = r.run_id
                                          AND o.step_slug <> ALL (coalesce(counts.leaf_slugs, '{}')))
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
         ARRAY(SELECT concat_ws(':', released.flow_slug, released.run_id, released.step_slug)
               FROM released WHERE released.status = 'started'),
         ARRAY(SELECT json_build_object('status', 'completed', 'run_ids', json_agg(e.run_id))::text
               FROM (SELECT runs_done.run_id, (row_number() OVER () - 1) / 100 AS chunk
                     FROM runs_done WHERE runs_done.status = 'completed') e
               GROUP BY e.chunk)
  INTO v_applied, v_rest, v_ready_runs, v_ready_steps, v_queued, v_ended
  FROM (SELECT array_agg(released.run_id) AS runs, array_agg(released.step_slug) AS steps
        FROM released WHERE released.status = 'created' AND released.remaining_deps = 0) ready;

  IF cardinality(v_queued) > 0 THEN
    PERFORM pgflow._notify_tasks(v_queued);
  END IF;
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
ALTER FUNCTION pgflow.complete_tasks(uuid[], text[], int[], int[], jsonb[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION pgflow.complete_tasks(uuid[], text[], int[], int[], jsonb[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- complete_and_claim is complete_tasks followed by claim_tasks, in one call:
-- a worker reports its results and claims tasks for its free slots in one
-- round trip. It returns one row per claimed task, each also carrying how
-- many completions applied; when no task is claimed, one row with applied
-- alone (the other columns NULL). The tasks the completions queue are
-- announced on pgflow_tasks only when the claim leaves some of them queued:
-- a worker that hands the next step of a chain to itself does not wake
-- every worker of the flow, itself included, for a task already taken.
CREATE FUNCTION pgflow.complete_and_claim(
  run_ids          uuid[],
  step_slugs       text[],
  task_indexes     int[],
  attempts         int[],
  outputs          jsonb[],
  worker_id        uuid,
  claim_flow_slugs text[],
  claim_step_slugs text[],
  max_tasks        int,
  with_run_input   boolean[] DEFAULT NULL,
  lease_grace      interval DEFAULT '2 seconds',
  turn             bigint DEFAULT NULL
) RETURNS TABLE (
  applied     int,
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
  v_applied int;
  v_claimed int;
  v_note    text;
  v_steps   text;
BEGIN
  -- (Assignments, not PERFORM: a plain expression costs no statement.)
  v_note := set_config('pgflow.claim_follows', pg_current_xact_id()::text, true);
  v_applied := pgflow.complete_tasks(complete_and_claim.run_ids, complete_and_claim.step_slugs,
                                     complete_and_claim.task_indexes, complete_and_claim.attempts,
                                     complete_and_claim.outputs);
  RETURN QUERY
  SELECT v_applied, c.run_id, c.flow_slug, c.step_slug, c.task_index, c.attempt, c.timeout,
         c.run_input, c.deps_output, c.item
  FROM pgflow.claim_tasks(complete_and_claim.worker_id, complete_and_claim.claim_flow_slugs,
                          complete_and_claim.claim_step_slugs, complete_and_claim.max_tasks,
                          complete_and_claim.with_run_input, complete_and_claim.lease_grace,
                          complete_and_claim.turn) c;
  GET DIAGNOSTICS v_claimed = ROW_COUNT;
  IF v_claimed = 0 THEN
    RETURN QUERY SELECT v_applied, NULL::uuid, NULL::text, NULL::text, NULL::int, NULL::int,
                        NULL::interval, NULL::jsonb, NULL::json, NULL::jsonb;
  END IF;
  v_note := set_config('pgflow.claim_follows', '', true);
  v_steps := current_setting('pgflow.unclaimed_steps', true);
  IF v_steps <> '' THEN
    -- Announce the flows of the noted steps (started here, so all their
    -- tasks were queued here) that still have a task queued: of a step the
    -- claim did not ask for, beyond its limit, or not visible yet. Each
    -- step's tasks are reached by the primary key (run, step number); the
    -- status is tested so that the planner cannot prefer the queue index,
    -- which holds every run's queued tasks of the step.
    v_note := set_config('pgflow.unclaimed_steps', '', true);
    PERFORM pg_notify('pgflow_tasks', f.flow_slug)
    FROM (SELECT DISTINCT n.flow_slug
          FROM (SELECT split_part(u.step, ':', 1) AS flow_slug, split_part(u.step, ':', 2)::uuid AS run_id,
                       split_part(u.step, ':', 3) AS step_slug
                FROM unnest(string_to_array(v_steps, ',')) AS u(step)) n
          JOIN pgflow.steps s ON s.flow_slug = n.flow_slug AND s.step_slug = n.step_slug
          -- (A lateral subquery with a limit: as EXISTS, the planner
          -- reached the tasks by the run alone and filtered the step.)
          CROSS JOIN LATERAL (SELECT 1 FROM pgflow.step_tasks t
                              WHERE t.run_id = n.run_id AND t.step_id = s.step_id
                                AND (t.status = 'queued') IS TRUE
                              LIMIT 1) q) f;
  END IF;
END $$;
ALTER FUNCTION pgflow.complete_and_claim(uuid[], text[], int[], int[], jsonb[], uuid, text[], text[], int, boolean[], interval, bigint)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION pgflow._notify_tasks(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgflow.complete_and_claim(uuid[], text[], int[], int[], jsonb[], uuid, text[], text[], int, boolean[], interval, bigint) FROM PUBLIC;

-- Roles already granted what a worker needs (EXECUTE on claim_tasks and
-- complete_tasks) get the new worker function too, and grant_worker grants
-- it from now on.
DO $$
DECLARE
  v_role name;
BEGIN
  FOR v_role IN
    SELECT r.rolname
    FROM pg_catalog.pg_proc p
    CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
    JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
    WHERE p.oid = 'pgflow.claim_tasks(uuid, text[], text[], int, boolean[], interval, bigint)'::regprocedure
      AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
      AND pg_catalog.has_function_privilege(a.grantee,
            'pgflow.complete_tasks(uuid[], text[], int[], int[], jsonb[])'::regprocedure, 'EXECUTE')
  LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION pgflow.complete_and_claim(uuid[], text[], int[], int[], jsonb[], uuid, text[], text[], int, boolean[], interval, bigint) TO %I', v_role);
  END LOOP;
END $$;

-- grant_worker gives an existing role what a worker needs: sync flow
-- definitions through the definition functions (and read them), claim,
-- complete, fail and release tasks, heartbeat, and see which runs ended.
-- It returns the statements it ran. Idempotent; run it again after an
-- upgrade that adds worker functions.
CREATE OR REPLACE FUNCTION pgflow.grant_worker(role_name name) RETURNS SETOF text
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
      ' pgflow.complete_and_claim(uuid[], text[], int[], int[], jsonb[], uuid, text[], text[], int, boolean[], interval, bigint),'
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
