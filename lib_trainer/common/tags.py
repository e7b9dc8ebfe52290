"""Facts of the booru tag vocabulary that the taggers' output and the caption tools share."""

# Emoticon tags whose underscore is part of the face, never a word separator (the list the WD14 tagger extension
# keeps as they are).
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
    "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})
