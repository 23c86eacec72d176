-- Argo CD health check for spiderpool.spidernet.io/SpiderNetwork.
--
-- Install it as `resource.customizations.health.spiderpool.spidernet.io_SpiderNetwork` in argocd-cm
-- (see README.md next to this file). Written for Lua 5.1 (Argo CD runs gopher-lua, a Lua 5.1).
--
-- The operator reports kstatus-style conditions with status.observedGeneration:
--   Ready        True once everything the topology renders is applied and every selected node
--                reports its interfaces applied; False with a reason otherwise.
--   Reconciling  True while work is in progress.
--   Stalled      True when progress needs a human (an invalid spec, failed nodes).
-- Mapping:
--   no status yet, or status.observedGeneration behind metadata.generation  -> Progressing
--   Stalled=True, or Ready=False with reason Invalid or Stalled             -> Degraded (its message)
--   Reconciling=True                                                         -> Progressing
--   Ready=True                                                               -> Healthy
--   anything else (Ready=False for another reason, Ready Unknown or absent) -> Progressing
local hs = {}

local function find(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

local function message_of(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local ready = find(conditions, "Ready")
local reconciling = find(conditions, "Reconciling")
local stalled = find(conditions, "Stalled")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(ready, message_of(stalled, "Stalled"))
  return hs
end
if ready ~= nil and ready.status == "False" and (ready.reason == "Invalid" or ready.reason == "Stalled") then
  hs.status = "Degraded"
  hs.message = message_of(ready, ready.reason)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = message_of(reconciling, message_of(ready, "Reconciling"))
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = message_of(ready, "Waiting for the Ready condition")
return hs
