// Copy, download and print the recovery codes shown once on this page.
(function () {
  "use strict";
  const t = window.authgateText || ((message) => message);
  const list = document.getElementById("recovery-codes");
  const status = document.getElementById("codes-status");
  if (!list) return;
  const codes = Array.from(list.querySelectorAll("code")).map((el) => el.textContent.trim());
  const text = t("authgate recovery codes (%(host)s)", { host: location.host }) + "\n" +
    t("Each code works once.") + "\n\n" + codes.join("\n") + "\n";
  const say = (message) => { if (status) status.textContent = message; };
  const actions = {
    copy: async () => {
      try { await navigator.clipboard.writeText(text); say(t("Copied.")); }
      catch (e) { say(t("Copy failed: select the codes and copy them by hand.")); }
    },
    download: () => {
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
      link.download = "authgate-recovery-codes.txt";
      document.body.appendChild(link);
      link.click();
      link.remove();
      say(t("Downloaded."));
    },
    print: () => window.print(),
  };
  document.querySelectorAll("[data-action]").forEach((button) => {
    button.addEventListener("click", () => actions[button.dataset.action]());
  });
})();
