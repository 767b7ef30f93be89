namespace Dingo.Tests; public class SmokeTests { [Fact] public void Catalog_has_solo() => Assert.NotNull(Dingo.Model.Catalog.FindPlan(Dingo.Model.Catalog.SoloPlanId)); }
