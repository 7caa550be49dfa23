// "Copy" buttons: data-copy names the element whose text goes to the clipboard.
(function () {
  "use strict";
  const t = window.authgateText || ((message) => message);
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = t("Copied");
      } catch (e) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = t("Selected: press Ctrl+C");
      }
    });
  });
})();
