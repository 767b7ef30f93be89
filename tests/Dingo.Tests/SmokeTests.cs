using Dingo.Tests.Support;

namespace Dingo.Tests;

[Trait(Tier.Name, Tier.Fast)]
public class SmokeTests
{
    [Fact]
    public void Catalog_has_solo() => Assert.NotNull(Dingo.Model.Catalog.FindPlan(Dingo.Model.Catalog.SoloPlanId));
}
