-- Orthanc routing rule for trying the LLNM node out (docker/compose.yaml).
-- When a study has been quiet for StableAge seconds, send the instances that did not come
-- from the node and were not sent before to the modality "llnm" (DicomModalities in
-- compose.yaml: AE title LLNM_NODE at node:11112). The node keeps what it analyses
-- (ultrasound images, report SRs) and answers the rest 0x0122.
-- The node's results (SR, heatmap secondary captures) come back into the same study and
-- make it "stable" once more; they are never sent back to the node. Instances that arrive
-- after the analysis are sent on (the node makes a new job version for them).
-- The "sent" list lives in memory: after an Orthanc restart a stable study may be sent
-- again, which the node answers 0x0000 and ignores (it deduplicates by SOP Instance UID).

local NODE_MODALITY = 'llnm'
local NODE_AET = 'LLNM_NODE'
local sent = {}

function OnStableStudy(studyId, tags, metadata)
  local instances = ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))
  local toSend = {}
  for _, instance in ipairs(instances) do
    local id = instance['ID']
    if not sent[id] then
      local meta = ParseJson(RestApiGet('/instances/' .. id .. '/metadata?expand'))
      if meta['RemoteAET'] ~= NODE_AET then
        table.insert(toSend, id)
      end
    end
  end
  if #toSend == 0 then
    return
  end
  print('llnm: sending ' .. #toSend .. ' instance(s) of study ' .. studyId .. ' to ' .. NODE_MODALITY)
  RestApiPost('/modalities/' .. NODE_MODALITY .. '/store',
              DumpJson({ Resources = toSend, Synchronous = false }, true))
  for _, id in ipairs(toSend) do
    sent[id] = true
  end
end
