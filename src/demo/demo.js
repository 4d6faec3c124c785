// Renders Web Chat against the proxy. The token comes from the proxy, which
// mints it with the Direct Line secret it holds: the page never sees a secret.
'use strict';

(async function () {
  const domain = document.body.dataset.directline;
  const status = document.getElementById('status');
  try {
    if (!window.WebChat) {
      throw new Error('Web Chat did not load. Offline? Start the demo with --webchat-bundle FILE.');
    }
    const answer = await fetch(domain + '/tokens/generate', { method: 'POST' });
    if (!answer.ok) {
      throw new Error('the proxy answered the token request with ' + answer.status);
    }
    const { token } = await answer.json();
    window.WebChat.renderWebChat(
      { directLine: window.WebChat.createDirectLine({ domain, token }) },
      document.getElementById('webchat')
    );
  } catch (error) {
    status.textContent = 'Cannot start Web Chat: ' + error.message;
  }
})();
