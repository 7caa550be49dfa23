// Translations for the portal's scripts: base.html embeds the page's messages as JSON keyed by
// the English text; a message missing there is shown in English.
(function () {
  "use strict";
  let table = null;
  window.authgateText = function (message, values) {
    if (table === null) {
      const source = document.getElementById("script-messages");
      try { table = JSON.parse(source ? source.textContent : "{}"); } catch (e) { table = {}; }
    }
    const text = Object.prototype.hasOwnProperty.call(table, message) ? table[message] : message;
    return text.replace(/%\((\w+)\)s/g, (all, name) =>
      (values && Object.prototype.hasOwnProperty.call(values, name) ? String(values[name]) : all));
  };
})();
