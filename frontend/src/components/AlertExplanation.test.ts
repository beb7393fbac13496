import { describe, expect, it } from "vitest";
import { contributionLines } from "./AlertExplanation";

describe("contributionLines", () => {
  it("prefers the model's own words, then names and weights", () => {
    expect(
      contributionLines({
        text: "amount 40x this card's usual",
        contributions: [{ text: "far from home" }, { name: "card_id__count_1h", contribution: 0.42 }, { other: 1 }],
      }),
    ).toEqual(["amount 40x this card's usual", "far from home", "card_id__count_1h (0.42)"]);
    expect(contributionLines(null)).toEqual([]);
  });
});
