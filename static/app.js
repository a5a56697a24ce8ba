// The page's one module: sign up, log in, and use the account, with the tokens where no other script reaches them.
// The access token lives only in the variable below: never in localStorage, sessionStorage, a cookie or the URL,
// so a reload forgets it. The refresh token is in an HttpOnly cookie that no script can read: the browser sends it
// to /auth/browser/refresh, which answers with a new access token (and a new cookie). See browser.py.

let accessToken = null;
let scopes = [];
let refreshTimer = 0;
let usersPage = { after: 0, nextAfter: null };

const $ = (id) => document.getElementById(id);
const JSON_HEADERS = { "Content-Type": "application/json" };
const postJson = (path, body) => fetch(path, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(body) });

class SignedOut extends Error {}

// Every tab of this origin refreshes through this one lock, one at a time. Two tabs that load at once would
// otherwise send the same cookie together, and the second would look like a stolen copy and end the session;
// in turn, the second tab sends the cookie that the first one got.
async function refresh() {
  return navigator.locks.request("auth-demo-refresh", async () => {
    const response = await fetch("/auth/browser/refresh", { method: "POST" });
    if (!response.ok) {
      accessToken = null;
      return false;
    }
    remember(await response.json());
    return true;
  });
}

// Keep the access token in memory, and refresh a minute before it runs out (halfway, for a short one).
function remember(token) {
  accessToken = token.access_token;
  scopes = token.scope.split(" ");
  clearTimeout(refreshTimer);
  const seconds = Math.max(token.expires_in - 60, token.expires_in / 2);
  refreshTimer = setTimeout(() => guard(async () => {
    if (!(await refresh())) showSignIn("Your session has ended: log in again.");
  }), seconds * 1000);
}

// A request with the access token. A 401 means it has expired or its session has ended: refresh once and retry;
// if the refresh is refused too, the session is over and the sign-in form comes back.
async function api(path, { method = "GET", body } = {}, retry = true) {
  const headers = { Authorization: `Bearer ${accessToken}`, ...(body === undefined ? {} : JSON_HEADERS) };
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 && retry) {
    if (await refresh()) return api(path, { method, body }, false);
    showSignIn("Your session has ended: log in again.");
    throw new SignedOut();
  }
  return response;
}

// What went wrong, in words: the `detail` the app gives, or each rule that a 422 names.
async function explain(response) {
  const answer = await response.json().catch(() => ({}));
  if (Array.isArray(answer.detail)) return answer.detail.map((error) => `${error.loc.at(-1)}: ${error.msg}`).join("; ");
  return answer.detail || `The app answered ${response.status}.`;
}

function say(alert, status = "") {
  $("alert").textContent = alert;
  $("status").textContent = status;
}

// Run an event's work: a signed-out tab says so once; any other failure shows in the alert.
async function guard(work) {
  try {
    await work();
  } catch (error) {
    if (!(error instanceof SignedOut)) say(`Something went wrong: ${error.message}`);
  }
}

function showSignIn(status = "") {
  accessToken = null;
  clearTimeout(refreshTimer);
  for (const id of ["signed-in", "greeting", "log-out"]) $(id).hidden = true;
  $("sign-in").hidden = false;
  say("", status);
}

async function showSignedIn() {
  $("sign-in").hidden = true;
  const greeting = await api("/");
  $("greeting").textContent = (await greeting.json()).message;
  for (const id of ["signed-in", "greeting", "log-out"]) $(id).hidden = false;
  await listSessions();
  $("users-section").hidden = !scopes.includes("admin");
  if (scopes.includes("admin")) await listUsers(0);
}

function cell(row, text) {
  row.insertCell().textContent = text;  // textContent, never innerHTML: what the app lists is shown, never run
}

function button(label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.addEventListener("click", () => guard(onClick));
  return element;
}

async function listSessions() {
  const sessions = await (await api("/users/me/sessions")).json();
  $("sessions").replaceChildren();
  for (const session of sessions) {
    const row = $("sessions").insertRow();
    cell(row, session.user_agent ?? "unknown");
    cell(row, session.client_address ?? "unknown");
    cell(row, new Date(session.last_used_at ?? session.started_at).toLocaleString());
    if (session.current) {
      row.className = "current";
      cell(row, "This session");
    } else {
      row.insertCell().append(button("End", () => endSessions(`/users/me/sessions/${session.id}`)));
    }
  }
}

async function endSessions(path) {
  const password = $("sessions-form").elements.password.value;
  if (!password) return say("Type your current password first: ending a session asks for it.");
  const response = await api(path, { method: "DELETE", body: { password } });
  if (!response.ok) return say(await explain(response));
  $("sessions-form").reset();
  say("", "Done: those sessions have ended.");
  await listSessions();
}

async function listUsers(after) {
  const response = await api(`/admin/users?limit=10&after=${after}`);
  if (!response.ok) return say(await explain(response));
  const page = await response.json();
  usersPage = { after, nextAfter: page.next_after };
  $("users").replaceChildren();
  for (const user of page.users) {
    const row = $("users").insertRow();
    cell(row, user.username);
    cell(row, user.role);
    cell(row, user.disabled ? "yes" : "no");
    cell(row, String(user.live_sessions));
    row.insertCell().append(
      button(user.disabled ? "Enable" : "Disable", () => changeUser(user.id, { disabled: !user.disabled })),
      button(user.role === "admin" ? "Make user" : "Make admin",
        () => changeUser(user.id, { role: user.role === "admin" ? "user" : "admin" })),
      button("End sessions", () => changeUser(user.id, null)),
    );
  }
  $("next-users").hidden = page.next_after === null;
}

// A change of role or of the disabled flag, or (with no change) the end of every session of the user.
async function changeUser(userId, change) {
  const path = change ? `/admin/users/${userId}` : `/admin/users/${userId}/sessions`;
  const response = await api(path, change ? { method: "PATCH", body: change } : { method: "DELETE" });
  if (!response.ok) return say(await explain(response));
  say("", "Done.");
  await listUsers(usersPage.after);
}

$("sign-in").addEventListener("submit", (event) => guard(async () => {
  event.preventDefault();
  const { username, password } = Object.fromEntries(new FormData(event.target));
  say("");
  if (event.submitter.value === "sign-up") {
    const signedUp = await postJson("/auth/", { username, password });
    if (!signedUp.ok) return say(await explain(signedUp));
  }
  const response = await postJson("/auth/browser/login", { username, password });
  if (!response.ok) return say(await explain(response));
  event.target.reset();
  remember(await response.json());
  await showSignedIn();
}));

$("log-out").addEventListener("click", () => guard(async () => {
  await fetch("/auth/browser/logout", { method: "POST" });
  showSignIn("You have logged out.");
}));

$("sessions-form").addEventListener("submit", (event) => guard(async () => {
  event.preventDefault();
  await endSessions("/users/me/sessions");
}));

$("password-form").addEventListener("submit", (event) => guard(async () => {
  event.preventDefault();
  const change = Object.fromEntries(new FormData(event.target));
  const response = await api("/users/me/password", { method: "PATCH", body: change });
  if (!response.ok) return say(await explain(response));
  event.target.reset();
  say("", "Password changed: every other session has ended.");
  await listSessions();
}));

$("delete-form").addEventListener("submit", (event) => guard(async () => {
  event.preventDefault();
  const form = event.target.elements;
  if (!form.confirm.checked) return say("Tick the box to confirm that the account goes, with all its sessions.");
  const response = await api("/users/me", { method: "DELETE", body: { password: form.password.value } });
  if (!response.ok) return say(await explain(response));
  await fetch("/auth/browser/logout", { method: "POST" });  // the session went with the account: clear the cookie
  showSignIn("Your account has been deleted.");
}));

$("next-users").addEventListener("click", () => guard(() => listUsers(usersPage.nextAfter)));

guard(async () => {
  if (await refresh()) await showSignedIn();
  else showSignIn();
});
