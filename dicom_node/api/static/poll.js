// Refreshes the job list's states and results in place every 3 s.
const rows = [...document.querySelectorAll("tr[data-job]")];
const field = (row, role) => row.querySelector(`[data-role="${role}"]`);
async function poll() {
  const ids = rows.map((row) => row.dataset.job).join(",");
  const response = await fetch(`/ui/jobs.json?ids=${ids}`, { credentials: "same-origin" });
  if (!response.ok) return;
  const jobs = await response.json();
  for (const row of rows) {
    const job = jobs[row.dataset.job];
    if (!job) continue;
    field(row, "state").textContent = job.state;
    field(row, "state").className = `badge state-${job.state}`;
    field(row, "stage").textContent = job.stage;
    field(row, "result").textContent = job.result;
    field(row, "synthetic").hidden = !job.synthetic;
  }
}
if (rows.length) setInterval(poll, 3000);
