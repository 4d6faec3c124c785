// What the emulator's scripted bot says (src/emulator/bot.rs, cards.rs).

export const WELCOME = 'Welcome to the Emulator Bot.';
export const SIGNED_IN = 'You are now signed in.';
export const OAUTH_CARD = 'application/vnd.microsoft.card.oauth';
/** The OAuth card's text. */
export const CARD_TEXT = 'Please sign in to continue.';
