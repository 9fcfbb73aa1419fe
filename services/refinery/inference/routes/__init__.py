"""One module per endpoint group; handlers parse, make one service call, shape the response."""
