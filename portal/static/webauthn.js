// WebAuthn ceremonies for the portal: register a device, use one as a second factor,
// sign in with a passkey (button and autofill). The server keeps every challenge;
// this script only moves JSON between navigator.credentials and the portal.
(function () {
  "use strict";
  const t = window.authgateText || ((message) => message);
  const root = document.documentElement;
  const base = root.dataset.base || "";
  const csrf = root.dataset.csrf || "";
  const supported = typeof window.PublicKeyCredential === "function" &&
    typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function";

  // Progress is a polite status; an error is an alert, so screen readers announce it at once.
  function say(id, message, isError) {
    const el = document.getElementById(id);
    if (!el) { return; }
    el.setAttribute("role", isError ? "alert" : "status");
    el.textContent = message;
    el.hidden = !message;
  }

  function fail(id, error) { say(id, explain(error), true); }

  async function post(path, body) {
    const response = await fetch(base + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (!response.ok) { throw new Error(data.error || t("The server answered %(status)s", { status: response.status })); }
    return data;
  }

  function explain(error) {
    if (error && error.name === "NotAllowedError") { return t("The request was cancelled or timed out."); }
    if (error && error.name === "InvalidStateError") { return t("This device is already registered."); }
    return (error && error.message) || t("Something went wrong.");
  }

  async function register(button) {
    const statusId = button.dataset.status;
    say(statusId, t("Follow your browser's prompt..."));
    try {
      const start = await post("/settings/webauthn/options", {});
      const options = PublicKeyCredential.parseCreationOptionsFromJSON(start.options);
      const credential = await navigator.credentials.create({ publicKey: options });
      const done = await post("/settings/webauthn/register", {
        challenge_id: start.challenge_id,
        credential: credential.toJSON(),
      });
      window.location.assign(done.next);
    } catch (error) {
      fail(statusId, error);
    }
  }

  async function authenticate(startPath, finishPath, extra, mediation, statusId, signal) {
    const start = await post(startPath, extra || {});
    const options = PublicKeyCredential.parseRequestOptionsFromJSON(start.options);
    const request = { publicKey: options };
    if (mediation) { request.mediation = mediation; }
    if (signal) { request.signal = signal; }
    const credential = await navigator.credentials.get(request);
    const done = await post(finishPath, Object.assign({}, extra || {}, {
      challenge_id: start.challenge_id,
      credential: credential.toJSON(),
    }));
    window.location.assign(done.next);
  }

  let conditional = null;

  function bind() {
    if (!supported) {
      document.querySelectorAll("[data-webauthn]").forEach((el) => { el.hidden = true; });
      say("webauthn-unsupported", t("This browser cannot use security keys or passkeys."));
      return;
    }
    document.querySelectorAll("[data-webauthn='register']").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", () => register(button));
    });
    recommend();
    document.querySelectorAll("[data-webauthn='second-factor']").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", () => {
        say(button.dataset.status, t("Follow your browser's prompt..."));
        const extra = { rd: button.dataset.rd || "" };
        authenticate("/2fa/webauthn/options", "/2fa/webauthn", extra, null, button.dataset.status)
          .catch((error) => fail(button.dataset.status, error));
      });
    });
    document.querySelectorAll("[data-webauthn='reauth']").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", () => {
        say(button.dataset.status, t("Follow your browser's prompt..."));
        const extra = { rd: button.dataset.rd || "" };
        authenticate("/reauth/webauthn/options", "/reauth/webauthn", extra, null, button.dataset.status)
          .catch((error) => fail(button.dataset.status, error));
      });
    });
    document.querySelectorAll("[data-webauthn='external-link']").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", () => {
        say(button.dataset.status, t("Follow your browser's prompt..."));
        authenticate("/login/external/link/webauthn/options", "/login/external/link/webauthn", {}, null,
          button.dataset.status).catch((error) => fail(button.dataset.status, error));
      });
    });
    document.querySelectorAll("[data-webauthn='passkey']").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", () => {
        if (conditional) { conditional.abort(); }
        say(button.dataset.status, t("Follow your browser's prompt..."));
        const extra = { rd: button.dataset.rd || "" };
        authenticate("/login/passkey/options", "/login/passkey", extra, null, button.dataset.status)
          .catch((error) => fail(button.dataset.status, error));
      });
      startConditional(button);
    });
  }

  // The welcome step recommends a passkey only where this device can keep one (Touch ID, Windows
  // Hello, an Android screen lock); otherwise the authenticator app stays the recommended action.
  async function recommend() {
    const passkey = document.getElementById("recommend-passkey");
    const app = document.getElementById("recommend-totp");
    if (!passkey || !app) { return; }
    const check = PublicKeyCredential.isUserVerifyingPlatformAuthenticatorAvailable;
    let available = false;
    try { available = typeof check === "function" && (await check.call(PublicKeyCredential)); } catch (e) {
      available = false;
    }
    if (available) {
      passkey.hidden = false;
      app.hidden = true;
    }
  }

  // Autofill: offer passkeys in the username field's suggestions where the browser can.
  async function startConditional(button) {
    if (!PublicKeyCredential.isConditionalMediationAvailable) { return; }
    if (!(await PublicKeyCredential.isConditionalMediationAvailable())) { return; }
    conditional = new AbortController();
    const extra = { rd: button.dataset.rd || "" };
    authenticate("/login/passkey/options", "/login/passkey", extra, "conditional", button.dataset.status,
      conditional.signal).catch((error) => {
      if (error && error.name !== "AbortError") { fail(button.dataset.status, error); }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", bind);
  } else {
    bind();
  }
})();
