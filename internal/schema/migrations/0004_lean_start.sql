-- pgflow schema, version 4: starting runs reads each input where it lies.
--
-- start_flows no longer copies its inputs through its statements. Version 1
-- unnested the inputs into rows, kept them in two materialized CTEs and
-- unnested a root fanout's input once more into a materialized set of its
-- elements: five copies of a 10 MB input on top of the one the call itself
-- holds, each in freshly allocated memory. Now the statements go through
-- the inputs by position and take each element by its index; the runs and
-- tasks written are the same. Inputs and run ids given in arrays that do
-- not start at 1, or have more than one dimension, are taken in storage
-- order, as unnest took the inputs (version 1 paired such run ids with the
-- wrong inputs).
--
-- CREATE OR REPLACE keeps a function's privileges but not its settings or
-- SECURITY DEFINER: start_flows gets those of versions 1 and 2 again.

-- start_flows starts one run per input (run_ids, when given, names them) and
-- returns the run ids in input order. A flow with a root fanout step rejects
-- an input that is not a JSON array, and then no run is created.
CREATE OR REPLACE FUNCTION pgflow.start_flows(flow_slug text, inputs jsonb[], run_ids uuid[] DEFAULT NULL)
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
  -- The statements below reach inputs and run ids by position from 1. An
  -- array that starts elsewhere or has more dimensions (a[0] := ... in
  -- PL/pgSQL starts at 0) is taken element by element in storage order.
  IF array_lower(inputs, 1) <> 1 OR array_ndims(inputs) > 1 THEN
    inputs := ARRAY(SELECT unnest(inputs));
  END IF;
  IF array_lower(start_flows.run_ids, 1) <> 1 OR array_ndims(start_flows.run_ids) > 1 THEN
    start_flows.run_ids := ARRAY(SELECT unnest(start_flows.run_ids));
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

  -- The inputs are reached by position (inputs[i]) throughout: unnesting
  -- them would copy each into a row.
  IF v_root IS NOT NULL THEN
    SELECT i.ord, jsonb_typeof(coalesce(inputs[i.ord], 'null')) AS got INTO v_bad
    FROM generate_series(1, cardinality(inputs)) AS i(ord)
    WHERE jsonb_typeof(coalesce(inputs[i.ord], 'null')) <> 'array'
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
  -- task per element of the input, taken by its index. A root fanout over
  -- [] is left to _advance below (it completes at once and may cascade).
  WITH ids AS MATERIALIZED (
    SELECT coalesce(start_flows.run_ids[i.ord], pgflow._new_run_id()) AS run_id, i.ord,
           CASE WHEN v_root IS NOT NULL THEN jsonb_array_length(inputs[i.ord]) END AS len
    FROM generate_series(1, cardinality(inputs)) AS i(ord)
  ), new_runs AS (
    INSERT INTO pgflow.runs (run_id, flow_slug, status, input, remaining_steps)
    SELECT ids.run_id, start_flows.flow_slug, 'started', coalesce(inputs[ids.ord], 'null'), v_steps FROM ids
  ), states AS MATERIALIZED (
    SELECT ids.run_id, ids.ord, s.step_slug, s.step_id, s.step_type, s.deps_count,
           coalesce(s.opt_start_delay, interval '0') AS start_delay,
           CASE WHEN s.deps_count > 0 THEN NULL
                WHEN s.step_type = 'single' THEN 1
                ELSE ids.len END AS n
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
    SELECT states.run_id, states.step_slug, e.idx, states.step_id, start_flows.flow_slug, 'queued', now() + states.start_delay,
           inputs[states.ord] -> e.idx
    FROM states CROSS JOIN LATERAL generate_series(0, states.n - 1) AS e(idx)
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
-- The settings of versions 1 and 2 (see there). work_mem still matters: the
-- indexes of a wide fanout's elements are materialized (100,000 of them
-- went through a temporary file with the default).
ALTER FUNCTION pgflow.start_flows(text, jsonb[], uuid[]) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
  SET work_mem = '64MB';
ALTER FUNCTION pgflow.start_flows(text, jsonb[], uuid[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
